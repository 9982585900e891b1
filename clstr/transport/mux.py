"""ssh through ControlMasters, with clstr's own mux client: the transport of
a run with connection sharing (the default).

Which masters start, and when, is decided here: one master serves up to
``sessions_per_master`` slots of a host (a group), because sshd's
MaxSessions (default 10) caps sessions per connection; and masters start
only for the slots the run can use at once (``prepare``), in random order,
so that with -m N, a low open-files limit or fewer jobs than slots no
connection is made that never runs a job.  A master's slots wait (held)
until the run hears it is up (``RunEvents.master_up``).  The run's node
health decides what a master's failure means; this transport only starts
the masters it is asked to (``start_master``).

An attempt goes through clstr's mux client while its master is up, through
the ssh client (transport/ssh.py) otherwise: for a host whose connection
cannot be shared, and whenever the mux client cannot talk to the master.
``--dry-run`` walks the same policy (dryrun.py), with masters that come up
at once.
"""

import collections

from ..failures import MuxError, cannot_start_ssh
from ..limits import out_of_resources
from .interface import NoSession, Transport
from .worker import worker_command
from .wrapper import login_shell_command, stdin_payload, wrapped_command


class MuxTransport(Transport):
    """Attempts through the masters in ``masters`` (masters.MasterSet, or
    --dry-run's stand-in) for the slots of ``pool`` (nodes.NodePool, whose
    slots this holds until their master is up), falling back to ``direct``
    (ssh.SshTransport).  ``events``: the run (transport.RunEvents).
    ``shuffle(items)`` puts the masters in the order they start."""

    # The control socket, besides the three pipe ends (the ends passed to
    # the master are closed once sent).
    fds_per_attempt = 4
    has_masters = True

    def __init__(self, pool, events, masters, direct, sessions_per_master, shuffle):
        self._pool = pool
        self._events = events
        self._masters = masters
        self._direct = direct
        self._per_master = max(1, sessions_per_master)
        # Masters up or starting when one could not start for want of
        # resources: no more run at once (None: no such failure yet).
        self._cap = None
        self.waiting_for_resources = False  # until something ends
        self._ssh_client_only = set()  # masters clstr's mux client cannot talk to
        self._slots = {}  # (host, group) -> slots it serves, once started
        unstarted = []
        per = self._per_master
        for host in pool.hosts.values():
            for group in range((host.slot_count + per - 1) // per):
                unstarted.append((host.name, group, min(per, host.slot_count - group * per)))
        shuffle(unstarted)
        self._unstarted = collections.deque(unstarted)
        pool.hold_every_slot()

    def master_of(self, slot):
        return slot.index // self._per_master

    # -- masters ------------------------------------------------------------

    def prepare(self, slots_in_demand):
        """Start masters for the slots in demand, no more.  A failed
        master's slots are made up for by the next one."""
        if not self._unstarted:
            return
        demand = slots_in_demand()
        while self._covered() < demand and self._unstarted and self._room_for_a_master():
            host, group, slots = self._unstarted.popleft()
            if self._pool.hosts[host].retired:
                continue
            self._slots[host, group] = slots
            self.start_master(host, group)

    def _covered(self):
        return sum(slots for (host, _), slots in self._slots.items()
                   if not self._pool.hosts[host].retired)

    def _room_for_a_master(self):
        """Whether another master may start now: not while one waits for
        resources, nor past as many as were up or starting when one could
        not start for want of them (at least one)."""
        if self.waiting_for_resources:
            return False
        return self._cap is None or self._masters.live_count < max(1, self._cap)

    def start_master(self, host, group):
        try:
            self._masters.start(host, group, lambda failure, unavailable:
                                self._started(host, group, failure, unavailable))
        except OSError as error:
            if out_of_resources(error):
                self._wait(host, group, error)
                return
            self._events.master_failed(host, group, cannot_start_ssh(error))

    def _started(self, host, group, failure, unavailable):
        if failure is not None:
            self._events.master_failed(host, group, failure)
            return
        unknown = self._masters.login_shell_unknown(host, group)
        if unknown:
            self._events.note("%s: login shell not known (%s); its jobs start through sh"
                              % (host, unknown))
        self._events.master_up(host, group, unavailable)

    def _wait(self, host, group, error):
        """A master could not start for want of fds or processes: never the
        host's fault.  Its slots wait, no more masters than are up or
        starting now run at once, and it is tried again first once
        something ends."""
        slots = self._slots.pop((host, group), 0)
        self._unstarted.appendleft((host, group, slots))
        self._cap = self._masters.live_count
        self.waiting_for_resources = True
        self._events.masters_short_of(self._covered(), error)

    def resources_freed(self):
        self.waiting_for_resources = False

    # -- attempts -----------------------------------------------------------

    def open(self, attempt, handler):
        return self._through_master(
            attempt.slot, handler,
            lambda control_path, login_shell: self._direct.open(attempt, handler, control_path),
            lambda login_shell: wrapped_command(attempt.command, login_shell,
                                                attempt.reports.token, attempt.prelude),
            attempt.reports, stdin_payload(attempt.command))

    def worker_process(self, slot, handler, classify_end=None):
        """A worker (workerpool.Worker) on ``slot``'s node: a session
        through its master like an attempt's, for the whole run, reporting
        to ``handler``; through the ssh client where an attempt would go.
        ``classify_end`` is not needed: the master's answers and ssh's log
        are the evidence, as for an attempt."""
        return self._through_master(
            slot, handler,
            lambda control_path, login_shell: self._direct.worker_process(
                slot, handler, control_path=control_path, login_shell=login_shell),
            worker_command, None, None)

    def remote_process(self, slot, handler, words, reports, stdin_data=None):
        return self._through_master(
            slot, handler,
            lambda control_path, login_shell: self._direct.remote_process(
                slot, handler, words, reports, stdin_data, control_path),
            lambda login_shell: login_shell_command(words), reports, stdin_data)

    def describe_remote(self, slot, words):
        control_path = self._masters.control_path(slot.host.name, self.master_of(slot))
        return self._direct.describe_remote(slot, words, control_path)

    def _through_master(self, slot, handler, open_direct, remote_command, reports, stdin_data):
        """A session on ``slot``'s node running ``remote_command(login
        shell)`` through the slot's master, or ``open_direct(control path,
        login shell)``'s through the ssh client."""
        host, group = slot.host.name, self.master_of(slot)
        control_path = self._masters.control_path(host, group)
        login_shell = self._masters.login_shell(host, group)
        if control_path is None or control_path in self._ssh_client_only:
            return open_direct(control_path, login_shell)
        return self._masters.session(
            host, group, remote_command(login_shell), handler,
            lambda error, detail: self._fall_back(
                slot, handler, control_path, error, detail,
                lambda: open_direct(control_path, login_shell)),
            reports, stdin_data)

    def describe(self, job, slot, prelude):
        """The ssh client's argv through the slot's master: what the mux
        client asks the master to run."""
        control_path = self._masters.control_path(slot.host.name, self.master_of(slot))
        return self._direct.describe(job, slot, prelude, control_path)

    def describe_worker(self, slot):
        """As ``describe``, for ``slot``'s worker."""
        host, group = slot.host.name, self.master_of(slot)
        return self._direct.describe_worker(slot, self._masters.control_path(host, group),
                                            self._masters.login_shell(host, group))

    def _fall_back(self, slot, handler, control_path, error, detail, open_direct):
        """clstr's mux client could not use the master: nothing ran.  A master
        that has gone is started again, the slot waiting for it; otherwise
        the session goes through the ssh client (``open_direct()``, which
        connects on its own if the master has gone)."""
        if error is MuxError.CONNECT_FAILED and self._master_gone(slot, detail):
            handler.unstarted(None)
            return NoSession()
        if error is MuxError.PROTOCOL_MISMATCH and control_path not in self._ssh_client_only:
            self._ssh_client_only.add(control_path)
            self._events.note("%s: the master speaks another mux protocol (%s); using the "
                              "ssh client" % (slot.host.name, detail))
        try:
            return open_direct()
        except OSError as error:
            handler.unstarted(error)
            return NoSession()

    def _master_gone(self, slot, detail):
        """The slot's master has gone (idle expiry, killed, its socket
        removed) or does not answer: start a new one, unless the run says
        the host's jobs connect on their own now (False)."""
        host, group = slot.host.name, self.master_of(slot)
        if not self._masters.starting(host, group):
            if not self._events.master_gone(host, group, self._masters.master_gone(host, group)):
                return False
            self._events.note("%s: master gone (%s), starting another" % (host, detail))
            self.start_master(host, group)
        return True

    def shutdown(self):
        self._masters.shutdown()
