"""How one attempt's output is delivered: merged lines (optionally tagged with
the host), grouped per job, or files per job.

``Delivery.open(attempt_id, job, host)`` returns an object with
``data(stream, bytes)`` and ``close(succeeded)``; stream is 1 (stdout) or 2
(stderr).  The runner feeds it and never needs to know which mode is on.
"""

import os

from .output import LineAssembler, SpillBuffer


def tag_lines(prefix, lines):
    """Put ``prefix`` before every line of ``lines`` (whole lines, or one
    final unterminated line)."""
    if not lines or not prefix:
        return lines
    body = lines[:-1] if lines.endswith(b"\n") else lines
    return prefix + body.replace(b"\n", b"\n" + prefix) + lines[len(body):]


class _Lines:
    """Line mode: whole lines go to the sinks as they arrive."""

    __slots__ = ("_sinks", "_prefix", "_assemblers")

    def __init__(self, sinks, prefix):
        self._sinks = sinks
        self._prefix = prefix
        self._assemblers = {1: LineAssembler(), 2: LineAssembler()}

    def data(self, stream, chunk):
        lines = self._assemblers[stream].feed(chunk)
        self._sinks[stream].write(self, tag_lines(self._prefix, lines))

    def close(self, succeeded):
        for stream, assembler in self._assemblers.items():
            self._sinks[stream].write(self, tag_lines(self._prefix, assembler.finish()))


class _Group:
    """Group mode: a job's output is held (on disk when large) and written at
    once when it completes; a failed attempt's output is dropped, so each
    job's output appears exactly once."""

    __slots__ = ("_sinks", "_prefix", "_assemblers", "_buffers")

    def __init__(self, sinks, prefix):
        self._sinks = sinks
        self._prefix = prefix
        self._assemblers = {1: LineAssembler(), 2: LineAssembler()}
        self._buffers = {1: SpillBuffer(), 2: SpillBuffer()}

    def data(self, stream, chunk):
        if self._prefix:
            chunk = tag_lines(self._prefix, self._assemblers[stream].feed(chunk))
        self._buffers[stream].append(chunk)

    def close(self, succeeded):
        for stream in (1, 2):
            buffer = self._buffers[stream]
            if self._prefix:
                buffer.append(tag_lines(self._prefix, self._assemblers[stream].finish()))
            if succeeded:
                self._sinks[stream].write_spilled(self, buffer)
            else:
                buffer.close()


class _Files:
    """Files mode: DIR/N.out and DIR/N.err for job N.  An attempt writes to
    hidden partial files that are renamed into place only if it succeeded, so
    a file that looks complete is complete."""

    __slots__ = ("_paths", "_fds")

    def __init__(self, directory, seq):
        self._paths = {stream: os.path.join(directory, "%d.%s" % (seq, suffix))
                       for stream, suffix in ((1, "out"), (2, "err"))}
        self._fds = {}
        for stream, path in self._paths.items():
            self._fds[stream] = os.open(_partial(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                        | os.O_CLOEXEC, 0o666)

    def data(self, stream, chunk):
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fds[stream], view):]

    def close(self, succeeded):
        for stream, path in self._paths.items():
            os.close(self._fds[stream])
            if succeeded:
                os.replace(_partial(path), path)
            else:
                os.unlink(_partial(path))


def _partial(path):
    directory, name = os.path.split(path)
    return os.path.join(directory, "." + name + ".partial")


class Delivery:
    """Chooses the mode for a run: ``group`` and ``tag`` flags, or an
    ``output_dir``.  In files mode ``record`` appends to DIR/index.tsv (job
    number, status, host, command), one line per job with a single
    write, so the index is never torn."""

    def __init__(self, sinks, tag=False, group=False, output_dir=None):
        self._sinks = sinks
        self._tag = tag
        self._group = group
        self._output_dir = output_dir
        self._index_fd = None
        if output_dir:
            self._index_fd = os.open(os.path.join(output_dir, "index.tsv"),
                                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                                     | os.O_CLOEXEC, 0o666)
            os.write(self._index_fd, b"seq\tstatus\thost\tcommand\n")

    def open(self, seq, host):
        if self._output_dir:
            return _Files(self._output_dir, seq)
        prefix = (host + ": ").encode("utf-8", "surrogateescape") if self._tag else b""
        return (_Group if self._group else _Lines)(self._sinks, prefix)

    def record(self, seq, failure, host, command):
        """Note a job's final outcome (files mode only): ``failure`` None if
        it completed, else how its last attempt failed.  The status column is
        0 for a completed job, else the failure's label ("job exit 3",
        "timeout", "refused"...): the words of -v and the failure report, not
        ssh's 255, which says nothing of what happened."""
        if self._index_fd is not None:
            status = "0" if failure is None else failure.label
            line = "%d\t%s\t%s\t%s\n" % (
                seq, status, host, command.replace("\t", "\\t").replace("\n", "\\n"))
            os.write(self._index_fd, line.encode("utf-8", "backslashreplace"))

    def close(self):
        if self._index_fd is not None:
            os.close(self._index_fd)
            self._index_fd = None
