"""SSH connection multiplexing: ControlMasters shared by a host's jobs.

Without multiplexing every job pays a full TCP connect, key exchange and
authentication (tens of ms of CPU on each side); with it, a job is one new
session on a connection that is already up.

One master serves up to ``sessions_per_master`` slots of a host, because
sshd's MaxSessions (default 10) caps sessions per connection: a host with more
slots gets more masters.  Sockets live in a fresh private (0700) directory with
short names, because unix socket paths are limited to about 100 bytes; a
fresh directory per run also means no stale socket of a crashed run is ever
reused.  Masters write to a log file, never to clstr's pipes: a master lives
on after the ssh that started it, and would hold a pipe open.
"""

import os
import shutil
import signal
import tempfile

from .failures import Failure, Kind, classify

# A master with no sessions for this long exits by itself: the safety net if
# clstr is killed before it can stop its masters.  Jobs whose master has gone
# fall back to a connection of their own.
MASTER_IDLE_EXIT = 60
# How long clstr waits for its masters to confirm they exit.
EXIT_WAIT = 5.0
# A master not up this long after its connect timeout is given up: ssh can
# fall back to a plain session that never returns (e.g. a socket in the way).
START_GRACE = 15.0


def _socket_directory():
    base = tempfile.gettempdir()
    if len(base) > 40:
        base = "/tmp"
    return tempfile.mkdtemp(prefix="clstr-", dir=base)


class Master:
    """One ControlMaster: its socket, and whether it is up."""

    __slots__ = ("host", "group", "path", "log_path", "ready", "starter", "timer", "timed_out")

    def __init__(self, host, group, path, log_path):
        self.host = host
        self.group = group
        self.path = path
        self.log_path = log_path
        self.ready = False
        self.starter = None  # pid of the ssh still setting the master up
        self.timer = None
        self.timed_out = False


class MasterSet:
    """The masters of one run.  ``start(host, group, on_done)`` starts one and
    calls ``on_done(failure)`` (None when it is up); ``control_path(host,
    slot_index)`` names the socket a slot's jobs use."""

    def __init__(self, loop, ssh, sessions_per_master=10, start_timeout=None):
        self._loop = loop
        self._ssh = ssh
        self._per_master = max(1, sessions_per_master)
        self._masters = {}
        self._start_timeout = start_timeout or ssh.connect_timeout + START_GRACE
        self.directory = _socket_directory()
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    def group_of(self, slot_index):
        return slot_index // self._per_master

    def groups(self, slot_count):
        return range((slot_count + self._per_master - 1) // self._per_master)

    def start(self, host, group, on_done):
        key = (host, group)
        master = self._masters.get(key)
        if master is None:
            name = "%d" % len(self._masters)
            master = self._masters[key] = Master(
                host, group, os.path.join(self.directory, name),
                os.path.join(self.directory, name + ".log"))
        else:
            # Starting again (--retry-nodes): the old master is gone or
            # useless.  A socket left by one killed outright would make the
            # new ssh quietly skip being a master.
            master.ready = False
            try:
                os.unlink(master.path)
            except FileNotFoundError:
                pass
        log_fd = os.open(master.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         0o600)
        argv = self._ssh.master_argv(host, master.path, MASTER_IDLE_EXIT)
        try:
            master.starter = self._loop.spawn(argv, self._devnull, self._devnull, log_fd,
                                              lambda code: self._started(master, code, on_done))
        finally:
            os.close(log_fd)
        master.timer = self._loop.call_later(self._start_timeout, lambda: self._too_slow(master))

    def _too_slow(self, master):
        if master.starter:
            master.timed_out = True
            os.kill(master.starter, signal.SIGTERM)

    def _started(self, master, code, on_done):
        master.starter = None
        master.timer.cancel()
        with open(master.log_path, "rb") as log:
            said = log.read()[-4096:]
        failure = classify(code, said)
        if master.timed_out:
            failure = Failure(Kind.TIMED_OUT, "master connection not up after %gs"
                              % self._start_timeout)
        elif failure is None and not os.path.exists(master.path):
            failure = Failure(Kind.SSH_ERROR, "master exited without its control socket")
        master.ready = failure is None
        on_done(failure)

    def control_path(self, host, slot_index):
        master = self._masters.get((host, self.group_of(slot_index)))
        return master.path if master is not None and master.ready else None

    def shutdown(self):
        """Ask every master to exit, wait a bounded time, remove the sockets.
        Runs its own loop iterations: the run is over by now."""
        pending = set()
        for master in self._masters.values():
            if master.starter:
                # Still connecting: nobody needs it any more.
                try:
                    os.kill(master.starter, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if not os.path.exists(master.path):
                continue
            argv = self._ssh.master_exit_argv(master.host, master.path)
            try:
                pid = self._loop.spawn(argv, self._devnull, self._devnull, self._devnull,
                                       lambda code, key=master.path: pending.discard(key))
            except OSError:
                continue
            if pid:
                pending.add(master.path)
        if pending:
            timer = self._loop.call_later(EXIT_WAIT, self._loop.stop)
            self._loop.run_while(lambda: bool(pending))
            timer.cancel()
        os.close(self._devnull)
        shutil.rmtree(self.directory, ignore_errors=True)
