"""The ssh client transport: a local ``ssh`` process per attempt.

Used with ``--no-multiplex``, for ``--on-each-node``, and by the mux
transport (transport/mux.py) for hosts whose connection cannot be shared and
whenever clstr's own mux client cannot talk to a master.  ssh logs to a file
of its own (``ssh -E``, one per attempt, in the run's private directory), so
the job's stderr carries only what the job and the user's own configuration
of ssh let through; the log is the evidence from which failures.classify
names ssh's own failure.
"""

import os

from ..failures import TAIL_BYTES, cannot_start_ssh, classify, read_log_tail, refused_log_file
from .endreport import RUN_TOKEN
from .interface import AttemptHandler, Session, Transport
from .process import ProcessSession
from .worker import worker_command
from .wrapper import login_shell_command, stdin_payload


class SshTransport(Transport):
    """Attempts through the ssh client ``ssh`` (sshcommand.SshSettings), each
    logging to a new file in ``private`` (privatedir.PrivateDirectory)."""

    def __init__(self, ssh, loop, private):
        self._ssh = ssh
        self._loop = loop
        self._private = private
        # ssh commands (--ssh-command's words) that refused -E: a front end
        # such as a site wrapper may not know it.  Their attempts run without
        # it (and without the LogLevel that goes with it): ssh's messages
        # then come on stderr.
        self._refuse_log_file = set()

    def open(self, attempt, handler, control_path=None):
        """As Transport.open; ``control_path``: the master socket ssh is to
        share (the mux transport's fallback), None for a connection of its
        own."""
        log_path = self._private.new_path("attempt-", ".log")
        argv = self._argv(attempt.job, attempt.slot, attempt.prelude, control_path, log_path,
                          attempt.reports.token)
        return _SshSession(self._loop, argv, handler, attempt.reports, control_path, log_path,
                           stdin_payload(attempt.command), self._refuse_log_file)

    def describe(self, job, slot, prelude, control_path=None):
        return self._argv(job, slot, prelude, control_path,
                          self._private.new_path("attempt-", ".log"))

    def worker_process(self, slot, handler, classify_end=None, control_path=None,
                       login_shell=None):
        """A worker's ssh (workerpool.Worker, ``--workers``) on ``slot``'s
        node, reporting to ``handler``, through the master at
        ``control_path`` if given; ``login_shell``: the node's, if known.
        Its end is named from its log as an attempt's ssh's is
        (failures.classify): a refused node is ssh's refusal, a worker lost
        under a job a lost connection.  ``classify_end``, an exec
        transport's way, is not needed: ssh's log is the evidence."""
        log_path = self._private.new_path("worker-", ".log")
        argv = self._worker_argv(slot, log_path, control_path, login_shell)
        return _SshSession(self._loop, argv, handler, None, control_path, log_path, None,
                           self._refuse_log_file)

    def describe_worker(self, slot, control_path=None, login_shell=None):
        """The argv ``worker_process`` runs (--dry-run)."""
        return self._worker_argv(slot, self._private.new_path("worker-", ".log"), control_path,
                                 login_shell)

    def remote_process(self, slot, handler, words, reports, stdin_data=None,
                       control_path=None):
        """As Transport.remote_process; ``control_path``: as for ``open``.
        Its end is named from ssh's log, as an attempt's is."""
        log_path = self._private.new_path("remote-", ".log")
        argv = self._remote_argv(slot, words, control_path, log_path)
        return _SshSession(self._loop, argv, handler, reports, control_path, log_path,
                           stdin_data, self._refuse_log_file)

    def describe_remote(self, slot, words, control_path=None):
        return self._remote_argv(slot, words, control_path,
                                 self._private.new_path("remote-", ".log"))

    def _remote_argv(self, slot, words, control_path, log_path):
        # Each word quoted for any login shell, which passes them on as argv.
        return self._ssh.remote_argv(slot.host.name, login_shell_command(words), control_path,
                                     log_path)

    def _worker_argv(self, slot, log_path, control_path, login_shell):
        return self._ssh.remote_argv(slot.host.name, worker_command(login_shell), control_path,
                                     log_path)

    def _argv(self, job, slot, prelude, control_path, log_path, token=RUN_TOKEN):
        return self._ssh.argv(slot.host.name, job.command_on(slot), control_path, log_path,
                              prelude, token)


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


class _SshSession(Session, AttemptHandler):
    """A local ssh with its own log file (-E), started again without it if
    the ssh command refuses the option (then never given it again): until
    the log exists (real ssh makes it before connecting), stderr is held
    back, so the refusal never shows as the job's output.  It is the
    handler of each ssh it starts, and reports to ``handler``.
    ``control_path``: the master socket it shares, if any (a mux client
    says nothing when its master dies, so a vanished socket is the
    evidence).  ``log_path``: the file ``argv`` tells ssh to log to (-E),
    read and deleted when the attempt ends.  ``stdin_data``: what to write
    on ssh's stdin first, or None.  ``refusing``: the set of ssh commands
    known to refuse -E (SshTransport's), which it adds to."""

    def __init__(self, loop, argv, handler, reports, control_path, log_path, stdin_data,
                 refusing):
        if log_path and _command_words(argv) in refusing:
            argv, log_path = _without_log_file(argv, log_path), None
        self._refusing = refusing
        self._loop = loop
        self._stdin_data = stdin_data
        self._reports = reports
        self._argv = argv
        self._handler = handler
        self._control_path = control_path
        self._log_path = log_path
        self._held = b""
        self._stdout_seen = False
        self._logging = log_path is None  # the log exists: nothing to hold
        self._stopped = False
        self._current = self._start()

    def _start(self):
        return ProcessSession(self._loop, self._argv, self, self._classify, self._reports,
                              stdin_data=self._stdin_data)

    def output(self, stream, data):
        if stream == 1:
            self._stdout_seen = True
        elif not self._logging:
            self._logging = os.path.exists(self._log_path)
            if not self._logging:
                self._held = (self._held + data)[-TAIL_BYTES:]
                return
            data, self._held = self._held + data, b""
        self._handler.output(stream, data)

    def _classify(self, code, stderr_tail, done):
        if not self._logging:  # before reading the log deletes it
            self._logging = os.path.exists(self._log_path)
        log_tail = read_log_tail(self._log_path, remove=True) if self._log_path else b""
        master_gone = bool(self._control_path) and not os.path.exists(self._control_path)
        done(classify(code, stderr_tail, master_gone, log_tail))

    def ended(self, code, failure):
        if (not self._logging and not self._stopped
                and refused_log_file(code, self._stdout_seen, self._held)):
            self._refusing.add(_command_words(self._argv))
            self._argv = _without_log_file(self._argv, self._log_path)
            self._log_path, self._held, self._logging = None, b"", True
            try:
                self._current = self._start()
                return
            except OSError as error:
                failure = cannot_start_ssh(error)
        if self._held:
            self._handler.output(2, self._held)
        self._handler.ended(code, failure)

    def send(self, data):
        """Write ``data`` on ssh's stdin (a worker's frames).  Until the log
        exists it is kept too: an ssh that refuses -E is started again,
        and given it again."""
        if not self._logging:
            self._stdin_data = (self._stdin_data or b"") + data
        self._current.send(data)

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
