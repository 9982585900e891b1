"""Node specifications: hostlist ranges, node files, and hostname checks.

Grammar (as pdsh and ClusterShell write hostlists)::

    specs  := spec ("," spec)*          commas inside brackets do not split
    spec   := [user "@"] text ("[" ranges "]" text)*
            | [user "@"] "[" address "]"   an IPv6 address (it holds ":")
    ranges := range ("," range)*
    range  := N | N "-" M               N <= M; zero padding of N is kept

``lab[01-03]`` is lab01 lab02 lab03; ``r[1-2]n[1,3]`` is r1n1 r1n3 r2n1 r2n3.
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


def expand(spec):
    """All host names that ``spec`` stands for, in order."""
    names = []
    for part in _split_top_level(spec.strip()):
        part = part.strip()
        if not part:
            raise NodeSpecError("empty name in node spec %r" % spec)
        names.extend(_expand_one(part))
        if len(names) > MAX_NAMES:
            raise NodeSpecError("node spec %r expands to too many names" % spec)
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
