"""Carries out node health's decisions (nodehealth.py decides, purely): the
pool's part at once, delays as the loop's timers, masters through the
transport, news as -v lines.  A host's slots take jobs only once the host is
prepared: its master up (if the transport has masters) and, with --send,
its files there (sendfiles.py)."""

from .failures import FirstFailures
from .nodehealth import Backoff, Direct, Readmit, Reconnect, Retire


class NodeCare:
    """Applies ``health``'s decisions to ``pool`` and ``transport``.
    ``say(text)``: one of clstr's -v lines; ``dispatch()``: start what can
    start; ``run_over()``: whether the run needs no more nodes (stopping, or
    every job done).  ``sends``: a sendfiles.Sends whose ``done`` is
    ``sent``, or None."""

    def __init__(self, loop, pool, transport, health, say, dispatch, run_over, sends=None):
        self._loop = loop
        self._sends = sends
        # Host name -> the admissions (NodePool.admit's ``which``) waiting
        # for its files.
        self._unsent = {}
        self._pool = pool
        self._transport = transport
        self._health = health
        self._say = say
        self._dispatch = dispatch
        self._run_over = run_over
        self._first_failures = FirstFailures()

    def start(self):
        """Before the first dispatch: with --send and no masters (whose
        coming up starts it), every host's slots wait for its files."""
        if self._sends is not None and not self._transport.has_masters:
            self._pool.hold_every_slot()
            for name in self._pool.hosts:
                self._admit(name, lambda slot: True)

    def shutdown(self):
        if self._sends is not None:
            self._sends.kill_all()

    # -- what happened -----------------------------------------------------------

    def sent(self, name, failure):
        """The --send files reached host ``name`` (``failure`` None), or
        could not: handled as a failure of the node's preparation."""
        admissions = self._unsent.pop(name, [])
        if failure is None:
            for which in admissions:
                self._pool.admit(name, which)
        else:
            self._apply(self._health.preparation_failed(self._pool.hosts[name], failure))
        self._dispatch()

    def attempt_ended(self, host, failure):
        self._apply(self._health.attempt_ended(host, failure))

    def no_node_can_cure(self, attempt, failure):
        """Whether ``attempt``'s ``failure`` is one no node can cure (the run
        must stop): one that says so, or the same words from several nodes
        before any job started, whose nodes are then reinstated (retired for
        what was this machine's fault)."""
        if attempt.reports.started:
            self._first_failures.job_started()
        if failure is None:
            return False
        blameless = self._first_failures.no_node_can_cure(attempt.slot.host.name, failure)
        for name in blameless or ():
            self._pool.reinstate(name)
        return bool(failure.kind.stops_run or blameless)

    def master_started(self, host, group, failure, unavailable=None):
        self._apply(self._health.master_started(self._pool.hosts[host], group, failure,
                                                unavailable))

    def master_gone(self, host, expired):
        """Whether another master may be started for ``host``."""
        direct = self._health.master_gone(host, expired)
        self._apply(direct)
        return not direct

    # -- carrying it out ---------------------------------------------------------

    def _apply(self, decisions):
        for decision in decisions:
            name = decision.host
            if isinstance(decision, Retire):
                self._pool.retire(name, decision.failure)
                self._say("node %s retired: %s" % (name, decision.failure))
                if decision.probe_after is not None:
                    self._loop.call_later(decision.probe_after, lambda name=name: self._probe(name))
            elif isinstance(decision, Backoff):
                self._loop.call_later(decision.seconds, lambda name=name, group=decision.group:
                                      self._try_again(name, group))
            elif isinstance(decision, Readmit):
                self._admit(name, self._admitted(decision))
                if decision.back:
                    self._say("node %s is back" % name)
            elif isinstance(decision, Reconnect):
                # A master coming up admits its slots; failing, it retires
                # the host again with a longer cooldown.
                held = self._pool.hosts[name].held
                for group in sorted({self._transport.master_of(slot) for slot in held}):
                    self._start_master(name, group)
            elif isinstance(decision, Direct) and decision.news:
                self._say("%s: connection sharing unavailable (%s), using direct "
                          "connections" % (name, decision.why))

    def _admit(self, name, which):
        """Let the held slots of host ``name`` that ``which(slot)`` take
        jobs, once its --send files are there; the first admission starts
        sending them, through one of those slots' connection."""
        if self._sends is None or self._sends.ready(name):
            self._pool.admit(name, which)
            return
        host = self._pool.hosts[name]
        slot = next((slot for slot in host.held if which(slot)), None)
        if host.retired or slot is None:
            return
        self._unsent.setdefault(name, []).append(which)
        if not self._sends.busy(name):
            self._sends.start(slot)

    def _admitted(self, readmit):
        """Which held slots a Readmit lets take jobs (a test for NodePool.admit)."""
        if readmit.probation:
            first = self._pool.hosts[readmit.host].held[0]
            return lambda slot: slot is first
        if readmit.group is None:
            return lambda slot: True
        return lambda slot: self._transport.master_of(slot) == readmit.group

    def _start_master(self, host, group):
        if not self._run_over():
            self._transport.start_master(host, group)

    def _try_again(self, name, group):
        """A throttled connection's rest is over: the host's held slots take
        jobs again (``group`` None), or the master of ``group`` starts."""
        if group is None:
            self._admit(name, lambda slot: True)
            self._dispatch()
        else:
            self._start_master(name, group)

    def _probe(self, name):
        """--retry-nodes: try a host retired for a transport failure again.
        Pending probes do not keep a run alive: it still ends when no live
        node is left."""
        if self._run_over() or not self._pool.hosts[name].retired:
            return
        if not self._pool.reinstate(name):
            return
        self._say("node %s: trying again" % name)
        self._apply(self._health.probe(name))
        self._dispatch()
