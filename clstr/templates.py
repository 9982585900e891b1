"""GNU parallel's argument templates: input groups on the command line, and
the replacement strings of a ``--job`` template.  Pure: no I/O.

Templates are active only when inputs are given (``::: a b``, ``:::: FILE``,
``--arg-file FILE``), and only in the one ``--job`` command: job files and
commands run without inputs stay literal, so ``find . -exec rm {} +`` or
``${#}`` in an existing job file never change meaning.

Each substituted value is quoted for a POSIX shell exactly as GNU parallel
quotes for sh (``shell_quote_scalar_default``), so a joblog's Command column
reads as parallel's, and ``--resume`` finds the jobs of a joblog parallel
wrote.  ``{%}`` (the slot) and ``{host}`` change with each attempt: a job
keeps them as markers (``Job.late``), filled in by ``command_on`` when an
attempt starts; the job's own command (the joblog, --resume's key) keeps
them as written.
"""

import re

# Words that end clstr's options and start the inputs (GNU parallel's).
VALUES = ":::"
FILES = "::::"
# GNU parallel's linked inputs: left out on purpose.
_LINKED = (":::+", "::::+")

# A replacement string: {} {.} {/} {//} {/.}, each also with a group
# number ({2} {2.} ...); {#} {%} {host}.  GNU parallel leaves {0} as it is.
_REPLACEMENT = re.compile(rb"\{(?:([1-9][0-9]*)?(\.|/|//|/\.)?|(#|%|host))\}")

# Markers in Job.late, filled in per attempt.
SLOT = 0
HOST = 1
_LATE = {b"%": SLOT, b"host": HOST}
# The job number's piece in a Template (substituted by expand).
_SEQ = 2


class TemplateError(Exception):
    """A mistake in the inputs or the template (the message names it)."""


def split_inputs(argv):
    """``argv`` cut at its first ``:::`` or ``::::``, before argparse sees
    it (``-n``, ``-N`` and ``-J`` take several words and would swallow the
    inputs): returns (the options' words, the input groups).  A group is
    (VALUES, [value, ...]) or (FILES, path): each ``::::`` file is a group
    of its own, as in GNU parallel."""
    starts = [index for index, word in enumerate(argv) if word in (VALUES, FILES) + _LINKED]
    if not starts:
        return list(argv), []
    options, rest = list(argv[:starts[0]]), argv[starts[0]:]
    groups = []
    mode, given = None, 0
    for word in rest + [None]:
        if word in _LINKED:
            raise TemplateError("%s (linked inputs) is not supported: give each input "
                                "its own ::: and use {1} {2}..." % word)
        if word in (VALUES, FILES, None):
            if mode is not None and not given:
                raise TemplateError("%s with no %s after it"
                                    % (mode, "values" if mode == VALUES else "file"))
            mode, given = word, 0
            if word == VALUES:
                groups.append((VALUES, []))
            continue
        given += 1
        if mode == VALUES:
            groups[-1][1].append(word)
        else:
            groups.append((FILES, word))
    return options, groups


_NEEDS_QUOTES = re.compile(rb"[^-_.+a-zA-Z0-9/]")


def quote(value):
    """``value`` (bytes) as one POSIX shell word, as GNU parallel quotes it
    for sh: bare if it holds only ``[-_.+a-zA-Z0-9/]``, else in single
    quotes with each ``'`` as ``'"'"'``."""
    if not value:
        return b"''"
    if not _NEEDS_QUOTES.search(value):
        return value
    quoted = b"'" + value.replace(b"'", b"'\"'\"'") + b"'"
    # As parallel does: no empty '' left at either end.
    if quoted.startswith(b"''"):
        quoted = quoted[2:]
    if quoted.endswith(b"''"):
        quoted = quoted[:-2]
    return quoted


def _strip_trailing_slashes(path):
    # Perl's File::Basename: s{(.)/*\z}{$1}s, a lone "/" stays.
    return re.sub(rb"(.)/*\Z", rb"\1", path, count=1, flags=re.S)


def _fileparse(path):
    """(directory with its slash, or b"./"; the rest), as Perl's fileparse."""
    match = re.match(rb"(.*/)?(.*)", path, flags=re.S)
    return match.group(1) or b"./", match.group(2)


def dirname(path):
    """Perl's File::Basename::dirname on Unix, which GNU parallel's {//}
    is: ``a/`` gives ``.``, ``a//b`` gives ``a``, ``/`` stays ``/``."""
    directory, base = _fileparse(path)
    directory = _strip_trailing_slashes(directory)
    if not base:
        directory, base = _fileparse(directory)
        directory = _strip_trailing_slashes(directory)
    return directory


# GNU parallel's own definitions (its %Global::replace), as Perl regular
# expressions: Python's re reads them alike (no re.S: "." stops at a
# newline there too, and "$" also matches before a last newline).
def _no_extension(value):
    return re.sub(rb"\.[^/.]*$", b"", value, count=1)


def _basename(value):
    return re.sub(rb".*/", b"", value, count=1)


_TRANSFORMS = {
    None: lambda value: value,
    b".": _no_extension,
    b"/": _basename,
    b"//": dirname,
    b"/.": lambda value: _no_extension(_basename(value)),
}


class Template:
    """A ``--job`` template for ``groups`` input groups.  ``expand(seq,
    values)`` gives job ``seq``'s command (bytes, ``{%}`` and ``{host}``
    as written) and its per-attempt parts (see ``command_on``), or None
    when it has neither.  Raises TemplateError for a ``{n}`` beyond the
    groups."""

    def __init__(self, text, groups, append=True, option="--job"):
        # The template as pieces: bytes, or (group index or None for all,
        # transform) for an input, _SEQ for the job number, or a marker.
        # ``append``: a template with no replacement string gets the values
        # appended (a command's; never a file name's, ``fill_path``);
        # ``option`` names it in errors.
        self._pieces = []
        self._late = False
        at = 0
        for match in _REPLACEMENT.finditer(text):
            self._pieces.append(text[at:match.start()])
            number, transform, special = match.groups()
            if special == b"#":
                self._pieces.append(_SEQ)
            elif special is not None:
                self._pieces.append(_LATE[special])
                self._late = True
            else:
                if number is not None and int(number) > groups:
                    raise TemplateError("%s %r: %s, but there %s only %d input group%s"
                                        % (option, text.decode("utf-8", "replace"),
                                           match.group(0).decode(), "is" if groups == 1
                                           else "are", groups, "s" * (groups != 1)))
                index = None if number is None else int(number) - 1
                self._pieces.append((index, _TRANSFORMS[transform]))
            at = match.end()
        self._pieces.append(text[at:])
        # Whether each job fills it in its own way: its number, or a value.
        self.per_job = any(piece == _SEQ or isinstance(piece, tuple) for piece in self._pieces)
        if len(self._pieces) == 1 and append:
            # No replacement string: the values go at the end, as in parallel.
            self._pieces += [b" ", (None, _TRANSFORMS[None])]

    def expand(self, seq, values):
        parts = self._parts(seq, values, quote)
        command = b"".join(b"{%}" if part == SLOT else b"{host}" if part == HOST else part
                           for part in parts)
        return command, (tuple(parts) if self._late else None)

    def fill_path(self, seq, values, slot_number, host):
        """The template as a file name (bytes) for job ``seq`` with
        ``values``, on slot ``slot_number`` of ``host``: every string
        filled in as it is, unquoted (--return's PATH, returnfiles.py)."""
        return b"".join(str(slot_number).encode() if part == SLOT
                        else host.encode() if part == HOST else part
                        for part in self._parts(seq, values, lambda value: value))

    def _parts(self, seq, values, word):
        """The template's pieces for job ``seq``: each input's value made
        a word by ``word``; the markers left for the attempt."""
        parts = []
        for piece in self._pieces:
            if isinstance(piece, bytes):
                parts.append(piece)
            elif piece == _SEQ:
                parts.append(str(seq).encode())
            elif isinstance(piece, tuple):
                index, transform = piece
                chosen = values if index is None else (values[index],)
                parts.append(b" ".join(word(transform(value)) for value in chosen))
            else:
                parts.append(piece)
        return parts


def command_on(command, late, slot_number, host):
    """The command an attempt runs: ``command`` itself, or with ``late``
    (Template.expand's parts) its ``{%}`` and ``{host}`` filled in for the
    attempt's slot (``slot_number``) and ``host`` (a name)."""
    if late is None:
        return command
    return b"".join(str(slot_number).encode() if part == SLOT
                    else quote(host.encode()) if part == HOST else part for part in late)
