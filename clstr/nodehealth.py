"""Node health: when a host is retired, rests, is tried again and is put back
to work.  The rules live here and nowhere else:

- A connection that fails retires its host, and so does a job's own non-zero
  exit under ``--job-failure node`` (clstr 0.1.0's rule, which node filtering
  relies on).  A job stopped by ``--timeout``, or whose command the node could
  not store, failed on its own.
- A connection throttled by sshd's MaxStartups (a job's or a master's) is
  transient: it backs off, exponentially with jitter, and tries again.  One
  count per host, started afresh when a connection succeeds; the host is
  retired after MAX_THROTTLED in a row while none of its jobs runs.
- ``--retry-nodes``: a host retired for a connection failure is tried again
  after a cooldown that doubles with each retirement (up to
  RETRY_COOLDOWN_MAX), with a real connection: its masters, or one slot on
  probation until a job succeeds there, then all of its slots.
- A host that cannot be prepared for its jobs (its --send files) is retired
  whatever --job-failure says, as a lost connection would retire it.
- Connection sharing is an optimisation, never a reason to lose a node: a
  master that cannot share, or whose restarts are used up, means direct
  connections for its host.

No loop, no I/O, no clock: each event returns a list of decisions (the
classes below) for the run to carry out, delays included, which the run arms
as timers; randomness comes from the ``rng`` passed in.  Hosts
(``nodes.Host``) are read here, never changed.
"""

import collections

from .failures import Kind

# A host whose connections are throttled this many times in a row, while none
# of its jobs runs, is retired: it is not merely busy.
MAX_THROTTLED = 6
THROTTLE_BACKOFF = 0.25  # seconds, doubled for each throttled attempt in a row
THROTTLE_BACKOFF_MAX = 4.0
# --retry-nodes: the cooldown doubles after each failed probe, up to this.
RETRY_COOLDOWN_MAX = 600.0
# How many times a host's masters are started again after exits that were
# not idle expiry (killed, socket removed, frozen); then the host uses direct
# connections.
MASTER_RESTARTS = 3


class Retire(collections.namedtuple("Retire", "host failure probe_after")):
    """Give ``host`` no more work (its running jobs may finish), for
    ``failure``; try it again after ``probe_after`` seconds (None: never)."""

    __slots__ = ()


class Backoff(collections.namedtuple("Backoff", "host group seconds")):
    """A throttled connection: rest ``seconds``, then try again: the host's
    held slots (``group`` None) or the master of ``group``."""

    __slots__ = ()


class Readmit(collections.namedtuple("Readmit", "host group probation back")):
    """Let held slots of ``host`` take jobs: those of the master of ``group``
    (None: all), or with ``probation`` one slot only.  ``back``: the host had
    been retired and answers again (-v says so)."""

    __slots__ = ()


class Reconnect(collections.namedtuple("Reconnect", "host")):
    """Try a retired host again by starting its masters; each that comes up
    readmits its slots, each that fails retires the host again."""

    __slots__ = ()


class Direct(collections.namedtuple("Direct", "host why news")):
    """The host's jobs use direct connections (no master), because ``why``;
    ``news``: the first time for this host (-v says so once)."""

    __slots__ = ()


def throttle_backoff(count, rng):
    """Seconds to wait after the ``count``-th throttled attempt in a row:
    exponential, capped, with jitter so that slots do not retry in step."""
    return min(THROTTLE_BACKOFF_MAX, THROTTLE_BACKOFF * 2 ** (count - 1)) * rng.uniform(0.5, 1.5)


def blames_node(failure, job_failure):
    """Whether ``failure`` (not throttling) is the node's, so that the node
    is retired and the job may run elsewhere, rather than the job's alone
    (``job_failure``: --job-failure, "node" or "job")."""
    if failure.kind in (Kind.TIMEOUT, Kind.NOT_DELIVERED):
        return False
    return failure.kind not in (Kind.JOB_EXIT, Kind.FILE) or job_failure == "node"


class NodeHealth:
    """The node-health state of one run.  ``retry_after``: --retry-nodes (0:
    never); ``masters``: the run shares connections through masters."""

    def __init__(self, rng, job_failure="node", retry_after=0, masters=False):
        self._rng = rng
        self._job_failure = job_failure
        self._retry_after = retry_after
        self._masters = masters
        self._throttled = {}  # host name -> throttled connections in a row
        self._retirements = {}  # host name -> retirements that --retry-nodes retries
        self._probation = set()  # hosts readmitted with one slot until a job succeeds
        self._direct = set()  # hosts said to use direct connections
        self._restarts = {}  # host name -> master restarts that were not idle expiry

    def attempt_ended(self, host, failure):
        """A job's attempt on ``host`` (a Host that no longer counts it as
        running) ended with ``failure`` (None: success)."""
        name = host.name
        if failure is None:
            self._throttled.pop(name, None)
            if name in self._probation:
                self._probation.discard(name)
                return [Readmit(name, None, False, True)]
            return []
        if host.retired:
            return []
        if failure.kind is Kind.THROTTLED:
            return [self._throttled_connection(host, None, failure)]
        if blames_node(failure, self._job_failure):
            return [self._retire(name, failure)]
        return []

    def master_started(self, host, group, failure, unavailable=None):
        """A master of ``host`` for slot group ``group`` was started:
        ``failure`` None when the host answered, and then ``unavailable`` is
        None when the master is up, or why it cannot share its connection."""
        name = host.name
        if failure is None:
            self._throttled.pop(name, None)
            decisions = [self._direct_connections(name, unavailable)] if unavailable else []
            if not host.retired:
                decisions.append(Readmit(name, group, False, name in self._retirements))
            return decisions
        if host.retired:
            return []
        if failure.kind is Kind.THROTTLED:
            return [self._throttled_connection(host, group, failure)]
        return [self._retire(name, failure)]

    def preparation_failed(self, host, failure):
        """``host`` could not be prepared for its jobs (its --send files
        did not all reach it: ``failure``).  A throttled session rests and
        tries again; anything else retires the host, whatever
        --job-failure says: none of its jobs could run without the files."""
        if host.retired:
            return []
        if failure.kind is Kind.THROTTLED:
            return [self._throttled_connection(host, None, failure)]
        return [self._retire(host.name, failure)]

    def master_gone(self, name, expired):
        """A job found the master it was to use gone (nothing ran); ``expired``:
        it had left by itself after carrying nothing for its idle time, as
        it should.  Returns [] when another may be started, or [Direct] once
        the host's other exits pass MASTER_RESTARTS."""
        if expired:
            return []
        restarts = self._restarts[name] = self._restarts.get(name, 0) + 1
        if restarts > MASTER_RESTARTS:
            return [self._direct_connections(name, "its master exited %d times" % restarts)]
        return []

    def probe(self, name):
        """The cooldown of retired host ``name`` is over and its idle slots
        are held again (``NodePool.reinstate``): how to try it.  Never a bare
        TCP connect, which recent sshd penalises: real work."""
        if self._masters:
            return [Reconnect(name)]
        self._probation.add(name)
        return [Readmit(name, None, True, False)]

    def _throttled_connection(self, host, group, failure):
        # sshd dropped the connection before key exchange (MaxStartups): the
        # host is busy, not broken.  A host with jobs running is alive,
        # however often it throttles.
        count = self._throttled[host.name] = self._throttled.get(host.name, 0) + 1
        if count >= MAX_THROTTLED and not host.running:
            return self._retire(host.name, failure)
        return Backoff(host.name, group, throttle_backoff(count, self._rng))

    def _retire(self, name, failure):
        probe_after = None
        if self._retry_after and failure.kind.transport:
            tries = self._retirements[name] = self._retirements.get(name, 0) + 1
            probe_after = min(self._retry_after * 2 ** (tries - 1),
                              max(self._retry_after, RETRY_COOLDOWN_MAX))
        return Retire(name, failure, probe_after)

    def _direct_connections(self, name, why):
        news = name not in self._direct
        self._direct.add(name)
        return Direct(name, why, news)
