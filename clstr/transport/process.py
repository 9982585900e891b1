"""One local process per attempt: what the ssh client (transport/ssh.py) and
``--exec`` templates (transport/exec.py) have in common.

Neither ssh's exit status (255 for its own errors and for a job's
``exit 255``) nor an exec transport's (1 for its own failures as for a
job's; srun's 0 after a node failure) is taken for the job's: the wrapper's
reports on stderr (endreport.py) pass through a ``ReportReader`` here, and
``failures.judge`` decides.  The tail of what the transport said on stderr
is kept as the evidence from which failures.py names its own failure.
"""

import signal

from ..failures import TAIL_BYTES
from .child import ChildProcess
from .interface import Session, StdinPipe


class ProcessSession(Session):
    """Runs ``argv`` under ``loop``, reporting to ``handler``
    (transport.AttemptHandler); ``classify_end(code, stderr_tail, done)``
    names how the transport ended (None: success) and calls ``done(failure)``
    with it, at once or later (Slurm asks the controller first).  Stderr
    passes through ``reports`` (endreport.ReportReader), which takes the
    wrapper's reports out of it (None: stderr as it comes, for a worker,
    whose jobs' sessions read their own reports).  ``stdin_data``: what to
    write on the transport's stdin first (a big job's command), or None, or
    a local file that is its stdin (interface.stdin_ends)."""

    def __init__(self, loop, argv, handler, classify_end, reports, group=False,
                 stdin_data=None):
        self._loop = loop
        self._handler = handler
        self._classify = classify_end
        self._reports = reports
        # Signal the transport's whole process group (it has a session of
        # its own): an --exec program's children must not outlive it.
        self._group = group
        self._stderr_tail = b""
        self._grace = None
        self._stdin = StdinPipe(stdin_data)
        try:
            self._child = ChildProcess(loop, argv, self._stdin.read_end, self._output,
                                       self._exited)
        except BaseException:
            self._stdin.close()
            raise
        self._stdin.handed_over()
        if stdin_data and not self._stdin.closed:
            self._stdin.send(loop, stdin_data)

    def _output(self, stream, data):
        if stream == 2:
            self._stderr_tail = (self._stderr_tail + data)[-TAIL_BYTES:]
            if self._reports is not None:
                data = self._reports.feed(data)
        if data:
            self._handler.output(stream, data)

    def _exited(self, code):
        if self._grace is not None:
            self._grace.cancel()
        self._stdin.close()
        rest = self._reports.close() if self._reports is not None else b""
        if rest:
            self._handler.output(2, rest)
        self._classify(code, self._stderr_tail, lambda failure: self._handler.ended(code, failure))

    def send(self, data):
        """Write ``data`` on the transport's stdin, after what was sent
        before (a worker's frames, transport/worker.py)."""
        if not self._stdin.closed:
            self._stdin.send(self._loop, data)

    def stop(self, grace):
        """Close stdin (the wrapper stops the job and reports); the
        transport is sent TERM after ``grace`` seconds if it has not ended,
        and KILL ``grace`` later (a program that ignores TERM)."""
        # (A stdin that is a file was never clstr's to close.)
        if self._grace is not None or not self._child.running:
            return
        self._stdin.close()
        self._grace = self._loop.call_later(grace, lambda: self._signal(signal.SIGTERM, grace))

    def _signal(self, signum, grace=None):
        self._child.kill(signum, group=self._group)
        if grace is not None and self._child.running:
            self._grace = self._loop.call_later(grace, lambda: self._signal(signal.SIGKILL))

    def kill(self):
        self._child.kill(signal.SIGKILL, group=self._group)
        self._stdin.close()

    def pause(self):
        self._child.pause()

    def resume(self):
        self._child.resume()
