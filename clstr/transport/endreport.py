"""The job's own word on how it ended, carried in-band on its stderr.

No transport's exit status can be trusted to mean the job's: ssh exits 255
for its own failures and for a job's ``exit 255``, srun exits 0 when a node
fails mid-step, and a mux master that dies closes the session with no status
at all.  So the remote wrapper (transport/wrapper.py) writes two reports on stderr: one as
the job starts, one once it has ended (every holder of its fd 8 gone), with
its exit status.  ``ReportReader`` takes them out of the stream and clstr
decides from them (failures.judge): an attempt that started and ended
without its end report lost its connection, whatever its transport said.

A report is ``RS clstr-TOKEN:s LF`` (start) or ``RS clstr-TOKEN:e<status> LF``
(end), or, for a job whose command came on stdin and could not all be stored
on the node (transport/wrapper.py ``_read_job``), ``RS clstr-TOKEN:u<bytes stored> LF``
after the start, in place of an end: the job never ran.  ``TOKEN`` is random
for each clstr process, so no job output can forge one by accident, and it
is looked for anywhere in the stream, not only at the start of a line: a job
whose last stderr line has no newline is followed at once by the end report.
"""

import binascii
import os

# One token per clstr process (a run): hex, so the wrapper holds no quote.
RUN_TOKEN = binascii.hexlify(os.urandom(8)).decode()
# The longest field after the mark: a status (the wrapper prints 0-255),
# or a count of bytes stored, with room to spare.
_MAX_FIELD = 24


def report_printf(token, kind):
    """Shell text writing one report to stderr: ``kind`` is ``"s"`` for the
    start, or ``"e%d"`` with the status as printf's argument.  printf turns
    \\036 into the RS byte, so the text holds no control character and no
    single quote (the wrapper is quoted as a whole)."""
    return 'printf "\\036clstr-%s:%s\\n"' % (token, kind)


class ReportReader:
    """Takes the start and end reports out of a stderr stream fed in chunks
    of any size: ``feed(data)`` returns the bytes to pass on, ``close()``
    what is still held back at the end.  ``started``, ``status`` (the
    end report's exit status, None until it came) and ``undelivered`` (the
    bytes of the command the node stored, None unless it could not store it
    all) are what was reported.

    ``before_start``: what to do with bytes that come before the start
    report ("pass" them on, or "drop" them: an --exec transport's own words,
    kept in ``said_before_start`` for the failure's reason).
    ``after_end``: likewise for bytes after the end report (an --exec
    transport's words about a job that has already ended)."""

    # One or two for each running job, and one for each worker's whole run.
    __slots__ = ("token", "mark", "started", "status", "undelivered", "said_before_start",
                 "_drop_before", "_drop_after", "_held")

    def __init__(self, token=RUN_TOKEN, before_start="pass", after_end="pass"):
        self.token = token
        self.mark = b"\x1eclstr-" + token.encode() + b":"
        self.started = False
        self.status = None
        self.undelivered = None
        self.said_before_start = b""
        self._drop_before = before_start == "drop"
        self._drop_after = after_end == "drop"
        self._held = b""

    @property
    def ended(self):
        """True once the wrapper said its last: the job ended, or never ran."""
        return self.status is not None or self.undelivered is not None

    def feed(self, data):
        data = self._held + data
        self._held = b""
        out = []
        while data:
            at = data.find(self.mark)
            if at < 0:
                keep = self._partial_mark_at_end(data)
                self._held = data[len(data) - keep:]
                out.append(self._pass(data[:len(data) - keep]))
                break
            out.append(self._pass(data[:at]))
            newline = data.find(b"\n", at + len(self.mark))
            if newline < 0:
                if len(data) - at - len(self.mark) > _MAX_FIELD:
                    # Not a report after all: pass the mark on as data.
                    out.append(self._pass(data[at:at + len(self.mark)]))
                    data = data[at + len(self.mark):]
                    continue
                self._held = data[at:]
                break
            field = data[at + len(self.mark):newline]
            if not self._take(field):
                out.append(self._pass(data[at:newline + 1]))
            data = data[newline + 1:]
        return b"".join(out)

    def close(self):
        held, self._held = self._held, b""
        return self._pass(held)

    def start(self):
        """The job has started, as other evidence says (a worker that is
        ready runs a frame at once, transport/worker.py): no start report
        is looked for."""
        self.started = True

    def _partial_mark_at_end(self, data):
        """How many bytes at the end of ``data`` could begin a mark."""
        for size in range(min(len(self.mark) - 1, len(data)), 0, -1):
            if self.mark.startswith(data[-size:]):
                return size
        return 0

    def _take(self, field):
        if field == b"s" and not self.started:
            self.started = True
            return True
        if field[:1] in (b"e", b"u") and field[1:].isdigit() and self.started and not self.ended:
            if field[:1] == b"e":
                self.status = int(field[1:])
            else:
                self.undelivered = int(field[1:])
            return True
        return False

    def _pass(self, data):
        if not data:
            return data
        if not self.started and self._drop_before:
            self.said_before_start = (self.said_before_start + data)[-4096:]
            return b""
        if self.ended and self._drop_after:
            return b""
        return data
