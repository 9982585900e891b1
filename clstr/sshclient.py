"""The ssh client transport: one local ``ssh`` process per attempt.

Used with ``--no-multiplex``, for ``--on-each-node``, for hosts whose
connection cannot be shared, and whenever clstr's own mux client cannot talk
to a master.  ssh exits with the remote command's status, or 255 for its own
errors, which ``failures.classify`` names from what ssh said on stderr.
"""

import os
import signal

from .child import ChildProcess
from .failures import classify
from .transport import STOP_GRACE, Session, StdinPipe

# Bytes of stderr kept for classifying a failure.
STDERR_TAIL = 4096


class SshClientSession(Session):
    """Runs ``argv`` (an ssh command line) under ``loop``.  ``control_path``:
    the master socket the ssh shares, if any (a mux client says nothing when
    its master dies, so a vanished socket is the evidence)."""

    def __init__(self, loop, argv, on_output, on_end, control_path=None, classify_end=None):
        self._loop = loop
        self._on_output = on_output
        self._on_end = on_end
        self._control_path = control_path
        self._classify = classify_end or self._classify_ssh
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
        self._on_output(stream, data)

    def _classify_ssh(self, code, stderr_tail):
        master_gone = bool(self._control_path) and not os.path.exists(self._control_path)
        return classify(code, stderr_tail, master_gone)

    def _exited(self, code):
        if self._grace is not None:
            self._grace.cancel()
        self._stdin.close()
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
