"""Node specifications: hostlist ranges, node files, and hostname checks.

Grammar (as pdsh and ClusterShell write hostlists, with GNU parallel's
``N/`` for slots)::

    specs  := slots ("," slots)*        commas inside brackets do not split
    slots  := [N "/"] spec              N slots on each host (N >= 1; default 1)
    spec   := [user "@"] text ("[" ranges "]" text)*
            | [user "@"] "[" address "]"   an IPv6 address (it holds ":")
    ranges := range ("," range)*
    range  := N | N "-" M               N <= M; zero padding of N is kept

``lab[01-03]`` is lab01 lab02 lab03; ``r[1-2]n[1,3]`` is r1n1 r1n3 r2n1 r2n3;
``2/lab[1-2]`` is lab1 lab1 lab2 lab2 (a host listed N times has N slots).
No host name holds a "/", so a slash always means slots.
"""

import re

# Expanding more names than this is surely a typo (lab[1-1000000000]).
MAX_NAMES = 100000

# After expansion a name may hold only these: letters, digits, and
# . _ - : @ % (IPv6 literals, scoped addresses, user@host).  No whitespace,
# quotes or shell syntax, and never a leading "-": a hostname must never be
# able to become an ssh option such as -oProxyCommand=...
_HOST = re.compile(r"[A-Za-z0-9._:@%][A-Za-z0-9._:@%-]*\Z")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?\Z")
_SLOT_COUNT = re.compile(r"[0-9]+\Z")
# An IPv6 address in brackets, as in URLs and ssh's own messages: [::1],
# user@[fe80::1%eth0].  A bracket body holding ":" is an address, never a
# range; the brackets go (ssh and {host} want the bare address).
_BRACKETED_ADDRESS = re.compile(r"([^\[\]@]*@)?\[([\w.%-]*:[\w.:%-]*)\]\Z")


class NodeSpecError(ValueError):
    """A node specification that cannot be used (message names the text)."""


def _split_top_level(spec):
    """Split on commas outside brackets."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(spec):
        if char == "[":
            depth += 1
            if depth > 1:
                raise NodeSpecError("nested brackets in node spec %r" % spec)
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise NodeSpecError("unbalanced ']' in node spec %r" % spec)
        elif char == "," and depth == 0:
            parts.append(spec[start:index])
            start = index + 1
    if depth:
        raise NodeSpecError("unbalanced '[' in node spec %r" % spec)
    parts.append(spec[start:])
    return parts


def _expand_ranges(text, spec):
    """The numbers a bracket body stands for, as zero-padded strings."""
    if not text.strip():
        raise NodeSpecError("empty brackets in node spec %r" % spec)
    values = []
    for part in text.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise NodeSpecError("bad range %r in node spec %r" % (part, spec))
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise NodeSpecError("descending range %r in node spec %r" % (part, spec))
        if int(high) - int(low) >= MAX_NAMES:
            raise NodeSpecError("range %r in node spec %r is too large" % (part, spec))
        width = len(low) if low.startswith("0") else 0
        values.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return values


def _expand_one(spec):
    address = _BRACKETED_ADDRESS.match(spec)
    if address:
        return [(address.group(1) or "") + address.group(2)]
    names = [""]
    rest = spec
    while rest:
        opening = rest.find("[")
        if opening < 0:
            names = [name + rest for name in names]
            break
        closing = rest.index("]", opening)
        prefix, body, rest = rest[:opening], rest[opening + 1:closing], rest[closing + 1:]
        if ":" in body:
            raise NodeSpecError("an address in brackets must be the whole host, as in "
                                "[::1] or user@[::1]: %r" % spec)
        values = _expand_ranges(body, spec)
        if len(names) * len(values) > MAX_NAMES:
            raise NodeSpecError("node spec %r expands to too many names" % spec)
        names = [name + prefix + value for name in names for value in values]
    return names


def _slots(part, spec):
    """(slots per host, the hosts' spec) of one comma-separated ``part``:
    GNU parallel's ``4/host``, or 1 without a slash."""
    count, slash, hosts = part.partition("/")
    if not slash:
        return 1, part
    if not _SLOT_COUNT.match(count) or int(count) < 1:
        raise NodeSpecError("bad slot count %r in node spec %r: write N/host, N a whole "
                            "number from 1 (4/lab01: four jobs at once on lab01)"
                            % (count, spec))
    if not hosts.strip():
        raise NodeSpecError("no host after %r in node spec %r" % (count + slash, spec))
    return int(count), hosts.strip()


def expand(spec):
    """All host names that ``spec`` stands for, in order, each once per
    slot (``4/h``: h four times)."""
    names = []
    for part in _split_top_level(spec.strip()):
        part = part.strip()
        if not part:
            raise NodeSpecError("empty name in node spec %r" % spec)
        count, part = _slots(part, spec)
        expanded = _expand_one(part)
        # Checked before repeating: 100000/lab[1-100000] is no list to build.
        if len(names) + count * len(expanded) > MAX_NAMES:
            raise NodeSpecError("node spec %r expands to too many names" % spec)
        names.extend(name for name in expanded for _ in range(count))
    return names


def validate_host(name):
    """Return ``name`` if it is safe to hand to ssh as a destination."""
    if not _HOST.match(name):
        raise NodeSpecError("not a usable host name: %r" % name)
    return name


def parse_node_lines(lines, source):
    """Hosts from the lines of a node file: blank lines and # comments are
    skipped; each line may be a hostlist; a host listed twice is two slots."""
    hosts = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            hosts.extend(validate_host(name) for name in expand(text))
        except NodeSpecError as error:
            raise NodeSpecError("%s:%d: %s" % (source, number, error))
    return hosts


def read_node_file(path):
    """Hosts listed in the file at ``path`` (``-`` is stdin)."""
    import sys
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
        text = data.decode("utf-8")
    except OSError as error:
        raise NodeSpecError("cannot read node file %s: %s" % (path, error.strerror))
    except UnicodeDecodeError as error:
        raise NodeSpecError("node file %s is not UTF-8 text (byte %d)" % (path, error.start))
    return parse_node_lines(text.splitlines(), path)


# -- folding: the inverse of expand ---------------------------------------------

_DIGITS = re.compile(r"(\d+)")


def natural_key(name):
    """Sort key ordering names as people count: node9 before node10, then
    node09 after node9 (same number, more digits)."""
    parts = _DIGITS.split(name)
    return [(int(part), len(part)) if index % 2 else part for index, part in enumerate(parts)]


def _width(digits):
    """The zero padding ``digits`` needs to be written back: its length if it
    starts with 0 (``007``), else 0 (any number written plainly; "0" too)."""
    return len(digits) if len(digits) > 1 and digits.startswith("0") else 0


def _fold_numbers(numbers):
    """A bracket body for a set of digit strings, as ClusterShell's nodeset
    writes it: runs of consecutive numbers of the same width (``9,09-10``,
    ``099-101,1000``).  A plain number joins the padded ones of its own
    length when there are any (``09 10`` is ``09-10``), since ``expand``
    pads every number of a range to its first one's width, no shorter."""
    padded = {len(digits) for digits in numbers if _width(digits)}
    classes = {}
    for digits in numbers:
        width = len(digits) if len(digits) in padded else 0
        classes.setdefault(width, set()).add(int(digits))
    runs = []
    for width, values in classes.items():
        start = previous = None
        for value in sorted(values) + [None]:
            if start is not None and value != previous + 1:
                runs.append((width, start, previous))
                start = None
            if start is None:
                start = value
            previous = value
    runs.sort(key=lambda run: (len("%0*d" % (run[0], run[1])), run[1]))
    return ",".join("%0*d" % (width, low) if low == high
                    else "%0*d-%0*d" % (width, low, width, high) for width, low, high in runs)


def _fold_products(tuples):
    """Cover a set of equal-length tuples of digit strings with products of
    sets, one set per position, folding the last position first (as
    ClusterShell does: r1n1 r1n2 r2n1 r2n2 is r[1-2]n[1-2], and r1n1 r1n2
    r2n1 is r1n[1-2],r2n1).  Returns a list of tuples of sets."""
    if len(next(iter(tuples))) == 1:
        return [({digits for (digits,) in tuples},)]
    lasts = {}
    for numbers in tuples:
        lasts.setdefault(numbers[:-1], set()).add(numbers[-1])
    heads = {}
    for head, last in lasts.items():
        heads.setdefault(frozenset(last), set()).add(head)
    return [product + (set(last),)
            for last, head_tuples in heads.items() for product in _fold_products(head_tuples)]


def fold(names):
    """The shortest hostlist in ClusterShell's style that ``expand`` turns
    back into ``names`` (as a set: duplicates go, order is natural order):
    lab01 lab02 lab03 lab05 is ``lab[01-03,05]``.  Zero padding is kept,
    each pattern of text around the numbers (``lab``, ``rack-node``,
    ``a-b``) folds on its own, names without digits, and IPv6 addresses,
    are listed as they are."""
    patterns = {}
    for name in set(names):
        parts = [name] if ":" in name else _DIGITS.split(name)
        patterns.setdefault(tuple(parts[0::2]), set()).add(tuple(parts[1::2]))
    folded = []
    for texts, tuples in patterns.items():
        if len(texts) == 1:
            folded.append((natural_key(texts[0]), texts[0]))
            continue
        for product in _fold_products(tuples):
            spec = first = texts[0]
            for numbers, text in zip(product, texts[1:]):
                body = _fold_numbers(numbers)
                spec += (body if len(numbers) == 1 else "[%s]" % body) + text
                first += min(numbers, key=natural_key) + text
            folded.append((natural_key(first), spec))
    return ",".join(spec for _, spec in sorted(folded))
