"""SSH connection multiplexing: ControlMasters shared by a host's jobs.

Without multiplexing every job pays a full TCP connect, key exchange and
authentication (tens of ms of CPU on each side); with it, a job is one new
session on a connection that is already up.

A master serves a group of a host's slots (which, and when masters start,
is the mux transport's policy: transport/mux.py).  Sockets live in the run's private directory
(privatedir.py) with short names, because unix socket paths are limited to
about 100 bytes.  Masters write to a log file there, at LogLevel VERBOSE,
never to clstr's pipes: a master lives on after the ssh that started it, and
would hold a pipe open; and nothing a master says reaches the user's output.

A master lives as long as the run needs it, no longer: it leaves by itself
after MASTER_IDLE_EXIT seconds without sessions (also when clstr was killed),
and one found gone when its host gets work (idle expiry, killed, socket
removed) is started again, as often as node health allows for exits that
were not idle expiry (nodehealth.MASTER_RESTARTS).

This module starts masters, learns what they know (pid, login shell), hands
out their sessions and stops them; whether a master carrying sessions still
answers, and killing one that does not, is masterwatch.py's job.
"""

import os
import signal
import time

from ..failures import classify_master, read_log_tail
from .interface import START_GRACE
from .masterwatch import MasterWatch
from .muxclient import AliveCheck, MuxAttempt, Terminate
from .muxsession import MuxSession
from .wrapper import LOGIN_SHELL_PROBE, login_shell_from_probe

# A master with no sessions for this long exits by itself: the safety net if
# clstr is killed before it can stop its masters, short so that none outlives
# clstr by much.  Its host's next job starts a new one.
MASTER_IDLE_EXIT = 10
# How long clstr waits for its masters to confirm they exit.
EXIT_WAIT = 5.0
# ssh creates the control socket right after authenticating, before it goes
# to the background; a master that has authenticated and still has no socket
# this much later will never have one (a front end that drops the Control
# options, say).
SOCKET_AFTER_AUTH = 2.0
# How often a starting master's log and socket are looked at.
WATCH_INTERVAL = 0.1
# The most of the login shell probe's output that is kept: a chatty rc file
# only makes the answer unusable.
PROBE_OUTPUT_LIMIT = 4096
# What ssh says at LogLevel VERBOSE once the user is authenticated.
AUTHENTICATED = b"Authenticated to "


class Master:
    """One ControlMaster: its socket, whether it is up, and the host's login
    shell as the master found it (None: not known)."""

    __slots__ = ("host", "group", "path", "log_path", "ready", "starter", "timer", "watcher",
                 "authenticated_at", "unavailable", "login_shell", "login_shell_unknown",
                 "probe", "pid", "sessions", "check", "check_timer", "waiters", "idle_since")

    def __init__(self, host, group, path, log_path):
        self.host = host
        self.group = group
        self.path = path
        self.log_path = log_path
        self.ready = False
        self.starter = None  # pid of the ssh still setting the master up
        self.timer = None
        self.watcher = None
        self.authenticated_at = None
        # Why connection sharing cannot work for this master (None: it can).
        self.unavailable = None
        self.login_shell = None
        self.login_shell_unknown = None  # why the probe found no login shell
        self.probe = None  # the _LoginShellProbe under way
        self.pid = None  # the master's own (it went to the background)
        self.sessions = set()  # the MuxSessions it carries
        self.check = None  # the AliveCheck under way
        self.check_timer = None  # when the next one starts
        self.waiters = []  # what waits for the check's verdict
        self.idle_since = None  # when it last carried nothing


class MasterSet:
    """The masters of one run, each known by its host and group.
    ``start(host, group, on_done)`` starts one and calls ``on_done(failure,
    unavailable)``: ``failure`` is None when the host answered, and then
    ``unavailable`` is None when the master is up, or the reason connection
    sharing does not work there (the host's jobs then use direct
    connections).  ``control_path(host, group)`` names the socket the
    group's jobs use, None for a direct connection.

    Connection sharing is an optimisation, never a reason to lose a node: a
    master that fails for a reason that is not a connection failure, exits 0
    without a socket, or authenticates and leaves no socket (an ssh front end
    that drops the Control options) makes the host use direct connections,
    and only a direct connection's failure retires it.  This is decided on
    evidence (exit status, the master's log, the socket), not on time alone:
    a throttled or slow key exchange is no missing feature."""

    def __init__(self, loop, ssh, directory, start_timeout=None):
        self._loop = loop
        self._ssh = ssh
        self._masters = {}
        self._alive_budget = ssh.alive_interval * ssh.alive_count
        self._alive_watch = MasterWatch(loop, ssh.alive_interval, self._alive_budget)
        self._start_timeout = start_timeout or ssh.connect_timeout + START_GRACE
        # The run's private directory (privatedir.py); its owner removes it.
        self.directory = directory
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    @property
    def live_count(self):
        """Masters up or starting: each is a local process (and the local
        process limit counts them)."""
        return sum(1 for master in self._masters.values() if master.ready or master.starter)

    def start(self, host, group, on_done):
        key = (host, group)
        master = self._masters.get(key)
        if master is None:
            name = "%d" % len(self._masters)
            master = self._masters[key] = Master(
                host, group, os.path.join(self.directory, name),
                os.path.join(self.directory, name + ".log"))
        else:
            # Starting again (gone, or --retry-nodes): the old master is gone
            # or useless.  A socket left by one killed outright would make
            # the new ssh quietly skip being a master.  Sessions it still
            # carries (its socket removed) are its own, not the new one's.
            master.ready = False
            master.unavailable = None
            master.authenticated_at = None
            master.login_shell = None
            master.login_shell_unknown = None
            master.pid = None
            master.sessions = set()
            self._alive_watch.stop(master)
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
        master.timer = self._loop.call_later(
            self._start_timeout,
            lambda: self._give_up(master, "master connection not up after %gs"
                                  % self._start_timeout))
        master.watcher = self._loop.call_later(WATCH_INTERVAL, lambda: self._watch(master))

    def _watch(self, master):
        """While the starting ssh runs: has it authenticated, and then does
        its socket follow?"""
        master.watcher = None
        if not master.starter:
            return
        if master.authenticated_at is None and AUTHENTICATED in read_log_tail(master.log_path):
            master.authenticated_at = time.monotonic()
        if (master.authenticated_at is not None and not os.path.exists(master.path)
                and time.monotonic() - master.authenticated_at > SOCKET_AFTER_AUTH):
            self._give_up(master, "authenticated, but no control socket followed")
            return
        master.watcher = self._loop.call_later(WATCH_INTERVAL, lambda: self._watch(master))

    def _give_up(self, master, reason):
        """Stop a starting master that will not share its connection."""
        if master.starter:
            master.unavailable = reason
            try:
                os.kill(master.starter, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _started(self, master, code, on_done):
        master.starter = None
        master.timer.cancel()
        if master.watcher:
            master.watcher.cancel()
            master.watcher = None
        failure = None
        if master.unavailable is None:
            failure, master.unavailable = classify_master(
                code, read_log_tail(master.log_path), os.path.exists(master.path))
        master.ready = failure is None and master.unavailable is None
        if master.unavailable and os.path.exists(master.path):
            self._ask_to_exit(master)
        if master.ready:
            self._learn_pid(master, on_done)
        else:
            on_done(failure, master.unavailable)

    def _learn_pid(self, master, on_done):
        """Ask the new master for its pid (the one that went to the
        background: the ssh clstr started has exited), so that it can be
        killed should it stop answering; then learn the login shell.  A
        master that does not tell (one clstr's mux client cannot talk to)
        is used all the same."""
        def answered(pid, why):
            master.check = None
            master.pid = pid
            master.idle_since = time.monotonic()
            self._learn_login_shell(master, lambda: on_done(None, None))

        try:
            master.check = AliveCheck(self._loop, master.path, self._alive_budget, answered)
        except OSError as error:
            # Out of fds: used all the same, as one that does not tell.
            answered(None, error.strerror)

    def _learn_login_shell(self, master, then):
        """Learn the host's login shell through its new master
        (_LoginShellProbe), then call ``then()``."""
        try:
            master.probe = _LoginShellProbe(self._loop, master, self._ssh.connect_timeout, then)
        except OSError as error:
            master.login_shell_unknown = "cannot ask: %s" % error.strerror
            then()

    def _ask_to_exit(self, master, on_exit=lambda why: None):
        """Ask the master at ``master.path`` to exit (muxclient.Terminate),
        then ``on_exit(why)`` (None: it said yes); False if clstr could not
        even ask (out of fds)."""
        try:
            Terminate(self._loop, master.path, self._alive_budget, on_exit)
        except OSError:
            return False
        return True

    # -- sessions ------------------------------------------------------------------

    def session(self, host, group, remote_command, handler, fall_back, reports,
                stdin_data=None):
        """A muxsession.MuxSession running ``remote_command`` (with
        ``stdin_data`` written to its stdin first, if any) through the
        master of ``group`` on ``host``, which carries it until it ends."""
        master = self._masters[(host, group)]
        return MuxSession(self._loop, master.path, remote_command, handler, fall_back, reports,
                          self._alive_watch.carrier(master), reply_timeout=self._alive_budget,
                          stdin_data=stdin_data)

    def starting(self, host, group):
        """True while the master of ``group`` on ``host`` is being started."""
        return bool(self._masters[(host, group)].starter)

    def master_gone(self, host, group):
        """A session could not reach the master of ``group`` on ``host``
        (nothing ran): it is no longer used (``control_path`` says None, and
        its jobs use direct connections until it is started again).  One
        that still takes connections without answering is killed first.
        Returns whether it had expired as it should, after carrying nothing
        for MASTER_IDLE_EXIT (node health counts the other exits)."""
        master = self._masters[(host, group)]
        self._alive_watch.kill_if_frozen(master, "the master did not answer for %gs; killed"
                                   % self._alive_budget)
        master.ready = False
        return (not master.sessions and master.idle_since is not None
                and time.monotonic() - master.idle_since >= MASTER_IDLE_EXIT - 1)

    def control_path(self, host, group):
        master = self._masters.get((host, group))
        return master.path if master is not None and master.ready else None

    def login_shell(self, host, group):
        """The login shell the master of ``group`` found on ``host``, if it
        knows it (a name such as "bash")."""
        master = self._masters.get((host, group))
        return master.login_shell if master is not None else None

    def login_shell_unknown(self, host, group):
        """Why the master of ``group`` on ``host`` does not know the login
        shell (None: it knows it, or it is not up)."""
        master = self._masters.get((host, group))
        return master.login_shell_unknown if master is not None else None

    def shutdown(self):
        """Ask every master to exit and wait a bounded time (the run's private
        directory, sockets and logs, is removed by its owner).
        Runs its own loop iterations: the run is over by now."""
        pending = set()
        for master in self._masters.values():
            self._alive_watch.stop(master)
            if master.probe:
                master.probe.close()
                master.probe = None
            if master.starter:
                # Still connecting: nobody needs it any more.
                try:
                    os.kill(master.starter, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if os.path.exists(master.path) and self._ask_to_exit(
                    master, lambda why, key=master.path: pending.discard(key)):
                pending.add(master.path)
        if pending:
            timer = self._loop.call_later(EXIT_WAIT, self._loop.stop)
            self._loop.run_while(lambda: bool(pending))
            timer.cancel()
        os.close(self._devnull)


class _LoginShellProbe:
    """Asks the host, through its new ``master``, which login shell sshd
    runs commands in (``wrapper.LOGIN_SHELL_PROBE``), sets the master's
    ``login_shell`` or ``login_shell_unknown``, then calls ``then()``.  A
    POSIX login shell runs the remote wrapper itself, saving every job an
    exec; any failure or odd answer, or none in ``timeout`` seconds, leaves
    the shell unknown, and jobs get the wrapper every shell can start (the
    jobs themselves find out whether the host works).  Raises OSError if it
    cannot ask (out of fds)."""

    __slots__ = ("_master", "_then", "_timeout", "_stdout", "_timer", "_attempt")

    def __init__(self, loop, master, timeout, then):
        self._master = master
        self._then = then
        self._timeout = timeout
        self._stdout = []
        self._timer = loop.call_later(timeout, self._give_up)
        try:
            self._attempt = MuxAttempt(loop, master.path, LOGIN_SHELL_PROBE, self._collect,
                                       self._finished, self._failed)
        except OSError:
            self._timer.cancel()
            raise
        self._attempt.close_stdin()

    def close(self):
        """Drop the probe, without calling ``then()``."""
        if self._attempt is not None:
            self._attempt.close()
            self._attempt = None
            self._timer.cancel()

    def _collect(self, stream, data):
        if stream == 1 and sum(map(len, self._stdout)) < PROBE_OUTPUT_LIMIT:
            self._stdout.append(data)

    def _failed(self, kind, detail):
        self._finished(why=detail)

    def _give_up(self):
        if self._attempt is not None:
            self._attempt.close()
            self._finished(why="no answer in %gs" % self._timeout)

    def _finished(self, code=None, why=None):
        if self._attempt is None:
            return
        self._attempt = None
        self._timer.cancel()
        master = self._master
        master.probe = None
        answer = b"".join(self._stdout)
        master.login_shell = login_shell_from_probe(code, answer)
        if master.login_shell is None:
            master.login_shell_unknown = why or "the probe answered %r, exit %s" % (
                answer[:60], code)
        self._then()
