"""Is a master that carries sessions still answering?

Starting a master (transport/masters.py) and watching one are different jobs with
different clocks: start-up is over in seconds and ends in a verdict once;
the watch runs for as long as a master carries sessions and may end in a
kill.  They share only the ``masters.Master`` record.

While a master carries sessions it is checked every ``interval`` seconds
(MUX_C_ALIVE_CHECK on a connection of its own, muxclient.AliveCheck).  One
that does not answer within ``budget`` seconds (ServerAliveInterval *
ServerAliveCountMax, what ssh allows a silent node) and still takes
connections is stopped (SIGSTOP) or hung, and is killed: its sessions end as
lost connections.  A session that ends without an exit status asks for a
check first (``carrier.check``), so that it knows whether its master was
frozen.  Idle masters are not checked: a control connection counts as a
session and would hold off the master's idle exit.  A hung network link is
ssh's own ServerAlive's job.
"""

import os
import signal
import socket
import time

from .muxclient import AliveCheck


class MasterWatch:
    """Checks the masters of one run (``masters.Master``) while they carry
    sessions, and kills one found frozen.  ``loop``: the run's loop;
    ``interval``: seconds between checks; ``budget``: how long a master has
    to answer one."""

    def __init__(self, loop, interval, budget):
        self._loop = loop
        self._interval = interval
        self._budget = budget

    def carrier(self, master):
        """The side of ``master`` that its sessions starting now see
        (muxsession.MuxSession's ``carrier``)."""
        return _Carrier(self, master)

    def check_now(self, master, then=None):
        """Check that ``master`` answers, now or with the check under way;
        ``then()`` runs once it is judged (killed, if it did not answer)."""
        if master.check_timer is not None:
            master.check_timer.cancel()
            master.check_timer = None
        if then is not None:
            master.waiters.append(then)
        if master.check is None:
            try:
                master.check = AliveCheck(self._loop, master.path, self._budget,
                                          lambda pid, why: self._checked(master, pid, why))
            except OSError:
                # Out of fds: no verdict (never a kill on no evidence); the
                # next check is due an interval later.
                _release(master)
                self._keep_checking(master)

    def kill_if_frozen(self, master, detail):
        """Kill ``master`` if it still takes connections: it has just failed
        to answer, so it is stopped (SIGSTOP) or hung.  Its sessions'
        control connections close as it dies, which ends them; each is told
        ``detail`` first."""
        if not _listening(master.path):
            return
        for session in master.sessions:
            session.master_killed(detail)
        if master.pid is not None:
            try:
                os.kill(master.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, master):
        """No more checks of ``master`` (it is started again, or the run is
        over); whatever waits for a verdict runs now."""
        if master.check_timer is not None:
            master.check_timer.cancel()
            master.check_timer = None
        if master.check is not None:
            master.check.close()
            master.check = None
        _release(master)

    def _keep_checking(self, master):
        if master.sessions and master.check is None and master.check_timer is None:
            master.check_timer = self._loop.call_later(self._interval,
                                                       lambda: self.check_now(master))

    def _checked(self, master, pid, why):
        master.check = None
        if pid is None:
            self.kill_if_frozen(master, "the master did not answer for %gs (%s); killed"
                                % (self._budget, why))
        _release(master)
        if pid is not None:
            self._keep_checking(master)
        # Otherwise it has gone (its sessions end by themselves) or is out of
        # reach (its socket removed): nothing more to check.

    def _drop(self, master, carried, session):
        carried.discard(session)
        if carried is master.sessions and not carried:
            master.idle_since = time.monotonic()
            if master.check_timer is not None:
                master.check_timer.cancel()
                master.check_timer = None


def _release(master):
    """Run what waits for ``master``'s verdict."""
    waiters, master.waiters = master.waiters, []
    for then in waiters:
        then()


class _Carrier:
    """A master's side of the sessions it carries, as it was when they
    started (one started again carries a new set; a session of the old one
    leaves the old set)."""

    __slots__ = ("_watch", "_master", "_carried")

    def __init__(self, watch, master):
        self._watch = watch
        self._master = master
        self._carried = master.sessions

    def carry(self, session):
        self._carried.add(session)
        self._watch._keep_checking(self._master)

    def drop(self, session):
        self._watch._drop(self._master, self._carried, session)

    def check(self, then):
        self._watch.check_now(self._master, then)


def _listening(path):
    """Whether a process still listens on the unix socket at ``path``: a
    stopped or hung master does; a dead one leaves its socket file refusing
    connections, and one may have been removed."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(path)
    except (BlockingIOError, InterruptedError):
        return True  # its backlog is full: listening, not accepting
    except OSError:
        return False
    finally:
        sock.close()
    return True
