"""Transports that run one local process per attempt: the ssh client, and
``--exec`` templates (srun, docker exec, kubectl exec).

The ssh client is used with ``--no-multiplex``, for ``--on-each-node``, for
hosts whose connection cannot be shared, and whenever clstr's own mux client
cannot talk to a master.  Neither ssh's exit status (255 for its own errors
and for a job's ``exit 255``) nor an exec transport's (1 for its own failures
as for a job's; srun's 0 after a node failure) is taken for the job's: the
wrapper's reports on stderr (endreport.py) pass through a ``ReportReader``
here, and ``failures.judge`` decides.  What the transport says is kept for
naming its own failure: ssh logs to a file of its own (``ssh -E``, one per
attempt, in the run's private directory), so the job's stderr carries only
what the job and the user's own configuration of ssh let through.
"""

import os
import signal
import time

from .child import ChildProcess
from .exectransport import classify_exec
from .failures import Failure, Kind, classify
from .limits import out_of_resources
from .transport import Session, StdinPipe

# Bytes of stderr, and of ssh's log, kept for classifying a failure.
STDERR_TAIL = 4096


class ProcessSession(Session):
    """Runs ``argv`` under ``loop``; ``classify_end(code, stderr_tail)`` names
    how the transport ended (None: success) and calls its ``done(failure)``
    argument with it, at once or later (Slurm asks the controller first).
    Stderr passes through ``reports`` (endreport.ReportReader), which takes
    the wrapper's reports out of it.  ``stdin_data``: what to write on the
    transport's stdin first (a big job's command), or None."""

    def __init__(self, loop, argv, on_output, on_end, classify_end, reports, group=False,
                 stdin_data=None):
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
        if stdin_data:
            self._stdin.send(loop, stdin_data)

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


# ssh commands (--ssh-command's words) that refused -E: a front end such as
# a site wrapper may not know it.  Their attempts run without it (and without
# the LogLevel that goes with it): ssh's messages then come on stderr.
_REFUSE_LOG_FILE = set()


def _command_words(argv):
    """The --ssh-command words at the head of an ssh argv (before the first
    -o, which clstr always passes)."""
    return tuple(argv[:argv.index("-o")]) if "-o" in argv else tuple(argv)


def _without_log_file(argv, log_path):
    """``argv`` without the ``-E log_path`` and ``-o LogLevel=INFO`` clstr
    added (the last of each: --ssh-command's words and -O come first)."""
    def last(word, words):
        return len(words) - 1 - words[::-1].index(word)
    at = last(log_path, argv)
    argv = argv[:at - 1] + argv[at + 1:]
    at = last("LogLevel=INFO", argv)
    return argv[:at - 1] + argv[at + 1:]


def _refused_log_file(code, stdout_seen, stderr_tail):
    """Whether an ssh command that never created its -E log refused the
    option, as a front end that does not know it does: it failed as ssh
    fails (255) or said so, and nothing of a job came out."""
    return code != 0 and not stdout_seen and (code == 255 or b"-E" in stderr_tail
                                              or b"-- E" in stderr_tail)


class _SshSession(Session):
    """A local ssh with its own log file (-E), started again without it if
    the ssh command refuses the option (then never given it again): until
    the log exists (real ssh makes it before connecting), stderr is held
    back, so the refusal never shows as the job's output."""

    def __init__(self, loop, argv, on_output, on_end, reports, control_path, log_path,
                 stdin_data):
        self._loop = loop
        self._stdin_data = stdin_data
        self._reports = reports
        self._argv = argv
        self._on_output = on_output
        self._on_end = on_end
        self._control_path = control_path
        self._log_path = log_path
        self._held = b""
        self._stdout_seen = False
        self._logging = log_path is None  # the log exists: nothing to hold
        self._stopped = False
        self._current = self._start()

    def _start(self):
        return ProcessSession(self._loop, self._argv, self._output, self._ended,
                              self._classify, self._reports, stdin_data=self._stdin_data)

    def _output(self, stream, data):
        if stream == 1:
            self._stdout_seen = True
        elif not self._logging:
            self._logging = os.path.exists(self._log_path)
            if not self._logging:
                self._held = (self._held + data)[-STDERR_TAIL:]
                return
            data, self._held = self._held + data, b""
        self._on_output(stream, data)

    def _classify(self, code, stderr_tail, done):
        if not self._logging:  # before reading the log deletes it
            self._logging = os.path.exists(self._log_path)
        log_tail = read_log_tail(self._log_path) if self._log_path else b""
        master_gone = bool(self._control_path) and not os.path.exists(self._control_path)
        done(classify(code, stderr_tail, master_gone, log_tail))

    def _ended(self, code, failure):
        if (not self._logging and not self._stopped
                and _refused_log_file(code, self._stdout_seen, self._held)):
            _REFUSE_LOG_FILE.add(_command_words(self._argv))
            self._argv = _without_log_file(self._argv, self._log_path)
            self._log_path, self._held, self._logging = None, b"", True
            try:
                self._current = self._start()
                return
            except OSError as error:
                failure = Failure(Kind.SSH_ERROR, "cannot start ssh: %s" % error.strerror)
        if self._held:
            self._on_output(2, self._held)
        self._on_end(code, failure)

    def stop(self, grace):
        self._stopped = True
        self._current.stop(grace)

    def kill(self):
        self._stopped = True
        self._current.kill()

    def pause(self):
        self._current.pause()

    def resume(self):
        self._current.resume()


def ssh_session(loop, argv, on_output, on_end, reports, control_path=None, log_path=None,
                stdin_data=None):
    """An attempt through a local ssh.  ``control_path``: the master socket
    it shares, if any (a mux client says nothing when its master dies, so a
    vanished socket is the evidence).  ``log_path``: the file ``argv`` tells
    ssh to log to (-E), read and deleted when the attempt ends.
    ``stdin_data``: what to write on ssh's stdin first, or None."""
    if log_path and _command_words(argv) in _REFUSE_LOG_FILE:
        argv, log_path = _without_log_file(argv, log_path), None
    return _SshSession(loop, argv, on_output, on_end, reports, control_path, log_path,
                       stdin_data)


def exec_session(loop, argv, on_output, on_end, reports, ask_allocation=None, stdin_data=None):
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
    return ProcessSession(loop, argv, on_output, on_end, classify_end, reports, group=True,
                          stdin_data=stdin_data)


# How long Slurm's controller may take to say whether the allocation runs.
SQUEUE_TIMEOUT = 10.0
# squeue could not start for want of fds or processes: try again after this
# (within SQUEUE_TIMEOUT).
SQUEUE_RETRY = 0.5


def ask_slurm_allocation(loop, job_id, done, deadline=None):
    """Ask Slurm whether allocation ``job_id`` still runs, without blocking
    the loop: ``done(failure)`` gets a FATAL Failure if it does not (revoked,
    expired, cancelled: no node can run jobs any more), None if it does or
    if the controller cannot tell (then the attempt's own failure stands).
    ``deadline``: the monotonic time by which squeue must have started."""
    if deadline is None:
        deadline = time.monotonic() + SQUEUE_TIMEOUT
    state = []
    argv = ["squeue", "-h", "-j", job_id, "-o", "%T"]
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
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            child = ChildProcess(loop, argv, devnull, lambda stream, data: state.append(data),
                                 exited)
        finally:
            os.close(devnull)
    except OSError as error:
        if out_of_resources(error) and time.monotonic() + SQUEUE_RETRY < deadline:
            # This machine's limit, not the allocation's: ask again shortly.
            loop.call_later(SQUEUE_RETRY,
                            lambda: ask_slurm_allocation(loop, job_id, done, deadline))
        else:
            done(None)
        return
    timer = loop.call_later(SQUEUE_TIMEOUT, gave_up)
