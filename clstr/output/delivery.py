"""How one attempt's output is delivered: merged lines (optionally tagged with
the host), grouped per job, files per job, or gathered per distinct output
(gathered.py); lines and groups in job order with -k (ordering.py).

``Delivery.open(seq, host)`` returns an object with ``data(stream, bytes)``
and ``close(succeeded)``; stream is 1 (stdout) or 2 (stderr).  The run feeds
it and never needs to know which mode is on.
"""

import os

from ..errors import LocalIOError
from ..failures import Kind
from ..userfiles import write_all
from .lines import LINE_ENDS, LineAssembler, final_line_end
from .ordering import Ordering
from .sinks import SpillBuffer


def tag_lines(prefix, lines):
    """Put ``prefix`` before every line of ``lines`` (whole lines, or one
    final unterminated line), lines ending as ``lines.LINE_ENDS`` says: after
    a lone "\\r" too, so a progress bar redrawn with "\\r" keeps its tag on
    screen."""
    if not lines or not prefix:
        return lines
    last = len(lines) - len(final_line_end(lines))
    body = lines[:last]
    if b"\r" in body:
        body = LINE_ENDS.sub(lambda found: found.group() + prefix, body)
    else:
        body = body.replace(b"\n", b"\n" + prefix)
    return prefix + body + lines[last:]


def tag_pieces(prefix, pieces):
    """Tag the pieces from a LineAssembler: bytes are tagged line by line; a
    spilled line (a SpillBuffer) stays on disk and gets the prefix as bytes
    of its own just before it."""
    for piece in pieces:
        if isinstance(piece, SpillBuffer):
            if prefix:
                yield prefix
            yield piece
        else:
            yield tag_lines(prefix, piece)


class _Lines:
    """Line mode: whole lines go to the sinks as they arrive."""

    __slots__ = ("_sinks", "_prefix", "_assemblers")

    def __init__(self, sinks, prefix):
        self._sinks = sinks
        self._prefix = prefix
        self._assemblers = {1: LineAssembler(), 2: LineAssembler()}

    def data(self, stream, chunk):
        self._deliver(stream, self._assemblers[stream].feed(chunk))

    def close(self, succeeded):
        for stream, assembler in self._assemblers.items():
            self._deliver(stream, assembler.finish())

    def _deliver(self, stream, pieces):
        sink = self._sinks[stream]
        for piece in tag_pieces(self._prefix, pieces):
            if isinstance(piece, SpillBuffer):
                sink.write_spilled(self, piece)
            else:
                sink.write(self, piece)


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
            self._hold(stream, self._assemblers[stream].feed(chunk))
        else:
            self._buffers[stream].append(chunk)

    def close(self, succeeded):
        for stream in (1, 2):
            buffer = self._buffers[stream]
            if self._prefix:
                self._hold(stream, self._assemblers[stream].finish())
            if succeeded:
                self._sinks[stream].write_spilled(self, buffer)
            else:
                buffer.close()

    def _hold(self, stream, pieces):
        buffer = self._buffers[stream]
        for piece in tag_pieces(self._prefix, pieces):
            if isinstance(piece, SpillBuffer):
                buffer.append_all(piece)
            else:
                buffer.append(piece)


class _Files:
    """Files mode: DIR/N.out and DIR/N.err for job N.  An attempt writes to
    fresh hidden partial files that are renamed into place only if it
    succeeded, so a file that looks complete is complete.  Writes that fail
    raise ``LocalIOError``."""

    __slots__ = ("_output_dir", "_names", "_fds", "_partials")

    def __init__(self, output_dir, seq):
        self._output_dir = output_dir
        self._names = {1: "%d.out" % seq, 2: "%d.err" % seq}
        self._fds = {}
        self._partials = {}
        try:
            for stream, name in self._names.items():
                self._fds[stream], self._partials[stream] = output_dir.partial(name)
        except BaseException:
            self.close(False)
            raise

    def data(self, stream, chunk):
        write_all(self._fds[stream], chunk, self._partials[stream])

    def close(self, succeeded):
        """Put the files in place if ``succeeded``, else remove them.  Safe
        to call again after a failure."""
        failed = None
        for stream in list(self._fds):
            try:
                os.close(self._fds.pop(stream))
            except OSError as error:  # NFS and some others report ENOSPC here
                failed = failed or LocalIOError(self._partials[stream], error)
        for stream in list(self._partials):
            partial = self._partials.pop(stream)
            if succeeded and failed is None:
                self._output_dir.publish(partial, self._names[stream])
            else:
                try:
                    os.unlink(partial)
                except OSError:
                    pass
        if failed is not None:
            raise failed


class Delivery:
    """Chooses the mode for a run: ``group`` and ``tag`` flags, an
    ``output_dir`` (a ``userfiles.OutputDir``, already open), or ``gather``;
    ``keep_order`` (not with ``output_dir`` or ``gather``) puts lines and
    groups in job order.  In files mode ``record`` appends to DIR/index.tsv
    (job number, status, host, command), one line per job with a single
    write, so the index is never torn."""

    def __init__(self, sinks, tag=False, group=False, output_dir=None, gather=False,
                 keep_order=False):
        self._sinks = sinks
        self._tag = tag
        self._group = group
        self._output_dir = output_dir  # an open userfiles.OutputDir
        self._gathering = None
        if gather:
            # Only now: its sha256 (hashlib, OpenSSL) costs a start ~5 ms.
            from .gathered import Gathering
            self._gathering = Gathering(sinks)
        self._ordering = Ordering(sinks) if keep_order else None

    def open(self, seq, host):
        if self._output_dir is not None:
            return _Files(self._output_dir, seq)
        if self._gathering is not None:
            return self._gathering.open(host)
        prefix = (host + ": ").encode("utf-8", "surrogateescape") if self._tag else b""
        mode = _Group if self._group else _Lines
        if self._ordering is not None:
            return self._ordering.open(seq, lambda sinks: mode(sinks, prefix))
        return mode(self._sinks, prefix)

    def keeps(self, failure):
        """Whether the output of an attempt that ended with ``failure``
        (None: it completed) is kept.  A completed one's always; when
        gathering (-E), also one whose job exited non-zero on its own: -E
        runs it nowhere else, so that output is its node's answer.  Output
        cut short (a lost connection, --timeout, Ctrl-C) never is."""
        return failure is None or (self._gathering is not None
                                   and failure.kind is Kind.JOB_EXIT)

    def finish(self):
        """The run's jobs are over: print what waited for the end (the
        gathered outputs; with -k what jobs behind one that never finished
        hold), before clstr's report."""
        if self._gathering is not None:
            self._gathering.write()
        if self._ordering is not None:
            self._ordering.finish()

    def record(self, seq, failure, host, command):
        """Note a job's final outcome: ``failure`` None if it completed, else
        how its last attempt failed.  With -k the next job's turn may come;
        in files mode the index gets its line, whose status column is 0 for
        a completed job, else the failure's label ("job exit 3", "timeout",
        "refused"...): the words of -v and the failure report, not ssh's
        255, which says nothing of what happened."""
        if self._ordering is not None:
            self._ordering.finished(seq)
        if self._output_dir is not None:
            status = "0" if failure is None else failure.label
            line = "%d\t%s\t%s\t%s\n" % (
                seq, status, host, command.replace("\t", "\\t").replace("\n", "\\n"))
            self._output_dir.record(line.encode("utf-8", "backslashreplace"))

    def close(self):
        if self._gathering is not None:
            self._gathering.close()
        if self._output_dir is not None:
            self._output_dir.close()
