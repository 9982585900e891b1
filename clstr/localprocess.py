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
from .exectransport import classify_exec
from .failures import Failure, Kind, classify
from .transport import Session, StdinPipe

# Bytes of stderr, and of ssh's log, kept for classifying a failure.
STDERR_TAIL = 4096


class ProcessSession(Session):
    """Runs ``argv`` under ``loop``; ``classify_end(code, stderr_tail)`` names
    how the transport ended (None: success) and calls its ``done(failure)``
    argument with it, at once or later (Slurm asks the controller first).
    Stderr passes through ``reports`` (endreport.ReportReader), which takes
    the wrapper's reports out of it."""

    def __init__(self, loop, argv, on_output, on_end, classify_end, reports, group=False):
        self._loop = loop
        self._on_output = on_output
        self._on_end = on_end
        self._classify = classify_end
        self._reports = reports
        # Signal the transport's whole process group (it has a session of
        # its own): an --exec program's children must not outlive it.
        self._group = group
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
            data = self._reports.feed(data)
        if data:
            self._on_output(stream, data)

    def _exited(self, code):
        if self._grace is not None:
            self._grace.cancel()
        self._stdin.close()
        rest = self._reports.close()
        if rest:
            self._on_output(2, rest)
        self._classify(code, self._stderr_tail, lambda failure: self._on_end(code, failure))

    def stop(self, grace):
        """Close stdin (the wrapper stops the job and reports); the
        transport is sent TERM after ``grace`` seconds if it has not ended,
        and KILL ``grace`` later (a program that ignores TERM)."""
        if self._stdin.closed or not self._child.running:
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


def ssh_session(loop, argv, on_output, on_end, reports, control_path=None, log_path=None):
    """An attempt through a local ssh.  ``control_path``: the master socket
    it shares, if any (a mux client says nothing when its master dies, so a
    vanished socket is the evidence).  ``log_path``: the file ``argv`` tells
    ssh to log to (-E), read and deleted when the attempt ends."""
    def classify_end(code, stderr_tail, done):
        log_tail = read_log_tail(log_path) if log_path else b""
        master_gone = bool(control_path) and not os.path.exists(control_path)
        done(classify(code, stderr_tail, master_gone, log_tail))
    return ProcessSession(loop, argv, on_output, on_end, classify_end, reports)


def exec_session(loop, argv, on_output, on_end, reports, ask_allocation=None):
    """An attempt through an ``--exec`` template.  What the transport says
    before the job starts is its own business (``reports`` drops it from the
    job's stderr; it is kept here for the failure's reason).
    ``ask_allocation(done)``: for --slurm, asks Slurm whether the allocation
    still runs when a job that started ends without its end report, and
    calls ``done(failure)`` with a FATAL failure if it does not (else None)."""
    def classify_end(code, stderr_tail, done):
        failure = classify_exec(code, stderr_tail)
        if ask_allocation is None or not reports.started or reports.ended:
            done(failure)
        else:
            ask_allocation(lambda fatal: done(fatal or failure))
    return ProcessSession(loop, argv, on_output, on_end, classify_end, reports, group=True)


# How long Slurm's controller may take to say whether the allocation runs.
SQUEUE_TIMEOUT = 10.0


def ask_slurm_allocation(loop, job_id, done):
    """Ask Slurm whether allocation ``job_id`` still runs, without blocking
    the loop: ``done(failure)`` gets a FATAL Failure if it does not (revoked,
    expired, cancelled: no node can run jobs any more), None if it does or
    if the controller cannot tell (then the attempt's own failure stands)."""
    state = []
    argv = ["squeue", "-h", "-j", job_id, "-o", "%T"]
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    answered = []

    def exited(code):
        if answered:
            return
        answered.append(True)
        timer.cancel()
        said = b"".join(state).split()
        if code == 0 and said == [b"RUNNING"]:
            done(None)
        elif code == 0 or b"Invalid job id" in b"".join(state):
            now = said[0].decode("ascii", "replace") if said else "gone"
            done(Failure(Kind.FATAL, "Slurm allocation %s is %s" % (job_id, now)))
        else:
            done(None)

    def gave_up():
        if not answered:
            answered.append(True)
            child.kill(signal.SIGKILL)
            done(None)

    try:
        child = ChildProcess(loop, argv, devnull, lambda stream, data: state.append(data),
                             exited)
    except OSError:
        done(None)
        return
    finally:
        os.close(devnull)
    timer = loop.call_later(SQUEUE_TIMEOUT, gave_up)
