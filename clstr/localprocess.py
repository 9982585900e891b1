"""Transports that run one local process per attempt: the ssh client, and
``--exec`` templates (srun, docker exec, kubectl exec).

The ssh client is used with ``--no-multiplex``, for ``--on-each-node``, for
hosts whose connection cannot be shared, and whenever clstr's own mux client
cannot talk to a master.  ssh exits with the remote command's status, or 255
for its own errors, which ``failures.classify`` names from what ssh said: ssh
logs to a file of its own (``ssh -E``, one per attempt, in the run's private
directory), so the job's stderr carries only what the job and the user's own
configuration of ssh let through.  An exec transport exits 1 for its own
failures as for a job's, so the remote wrapper writes a start marker first
(exectransport.py).
"""

import os
import signal

from .child import ChildProcess
from .exectransport import StartMarkerFilter, classify_exec
from .failures import classify
from .transport import STOP_GRACE, Session, StdinPipe

# Bytes of stderr, and of ssh's log, kept for classifying a failure.
STDERR_TAIL = 4096


class ProcessSession(Session):
    """Runs ``argv`` under ``loop``; ``classify_end(code, stderr_tail)`` names
    how it ended (None: success).  ``stderr_filter``: an object with
    ``feed(bytes) -> bytes`` and ``close() -> bytes`` that stderr passes
    through on its way to the job's output."""

    def __init__(self, loop, argv, on_output, on_end, classify_end, stderr_filter=None):
        self._loop = loop
        self._on_output = on_output
        self._on_end = on_end
        self._classify = classify_end
        self._filter = stderr_filter
        self._stderr_tail = b""
        self._grace = None
        self._stdin = StdinPipe()
        try:
            self._child = ChildProcess(loop, argv, self._stdin.read_end, self._output,
                                       self._exited)
        except BaseException:
            self._stdin.close()
            raise
        self._stdin.handed_over()

    def _output(self, stream, data):
        if stream == 2:
            self._stderr_tail = (self._stderr_tail + data)[-STDERR_TAIL:]
            if self._filter:
                data = self._filter.feed(data)
        if data:
            self._on_output(stream, data)

    def _exited(self, code):
        if self._grace is not None:
            self._grace.cancel()
        self._stdin.close()
        if self._filter:
            rest = self._filter.close()
            if rest:
                self._on_output(2, rest)
        self._on_end(code, self._classify(code, self._stderr_tail))

    def stop(self):
        if self._stdin.closed or not self._child.running:
            return
        self._stdin.close()
        self._grace = self._loop.call_later(STOP_GRACE,
                                            lambda: self._child.kill(signal.SIGTERM))

    def kill(self):
        self._child.kill(signal.SIGKILL)
        self._stdin.close()

    def pause(self):
        self._child.pause()

    def resume(self):
        self._child.resume()


def read_log_tail(path):
    """The last STDERR_TAIL bytes of ssh's log at ``path``, which is then
    deleted (b"" if ssh never wrote it)."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - STDERR_TAIL))
            tail = log.read()
        os.unlink(path)
    except OSError:
        return b""
    return tail


def ssh_session(loop, argv, on_output, on_end, control_path=None, log_path=None):
    """An attempt through a local ssh.  ``control_path``: the master socket
    it shares, if any (a mux client says nothing when its master dies, so a
    vanished socket is the evidence).  ``log_path``: the file ``argv`` tells
    ssh to log to (-E), read and deleted when the attempt ends."""
    def classify_end(code, stderr_tail):
        log_tail = read_log_tail(log_path) if log_path else b""
        master_gone = bool(control_path) and not os.path.exists(control_path)
        return classify(code, stderr_tail, master_gone, log_tail)
    return ProcessSession(loop, argv, on_output, on_end, classify_end)


def exec_session(loop, argv, on_output, on_end):
    """An attempt through an ``--exec`` template: the start marker, taken out
    of stderr, tells the transport's failures from the job's."""
    # What the transport says before the job starts is its own business:
    # kept for the failure's reason, never mixed into the job's stderr.
    marker = StartMarkerFilter(keep_before=False)
    return ProcessSession(loop, argv, on_output, on_end,
                          lambda code, tail: classify_exec(code, marker.started, tail), marker)
