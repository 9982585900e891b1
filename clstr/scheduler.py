"""Policy: which job runs on which slot, and what a finished attempt means
for the job (what it means for the node is nodehealth.py's).

No processes, sockets or timers here: the run asks for assignments and
reports results, so the rules can be tested with synthetic events (the only
I/O is the job feed reading its files when a job is taken).

The rule from clstr 0.1.0: ssh exiting non-zero cannot be told apart from the
node failing, so the node is assumed broken.  The job goes to the back of the
queue to run elsewhere (the host gets no more work, nodehealth.py).  Users rely
on this to filter nodes (``[ -z "$(users)" ] && job``).
Refinements, each chosen by the user or forced by ssh's nature:
- ``job_failure="job"``: a job's own non-zero exit fails that job only;
- ``max_attempts``: a job that failed on that many nodes is given up;
- a connection throttled by sshd's MaxStartups is transient: the job goes
  first again and its slot is held while it backs off;
- a job killed by ``--timeout`` failed on its own: not retried;
- so did a job whose command the node could not store (``not delivered``);
- ``retries`` (--retries, with ``job_failure="job"``): a job that failed on
  its own runs again until it has failed that many times (0: no limit),
  first on a host where it failed fewer times: it waits for one rather than
  run again where it failed, and reuses a host only when every host still
  usable has seen it fail (GNU parallel's rule);
- ``halt`` (--halt, halt.py): once enough jobs failed or completed, no new
  job starts.
"""

import collections

from .failures import Kind
from .halt import Halted
from .nodehealth import blames_node


class Outcome:
    """What an attempt's end meant for its job: ``requeued``, or ``gave_up``
    (the job will not be tried again)."""

    __slots__ = ("requeued", "gave_up")

    def __init__(self, requeued=False, gave_up=False):
        self.requeued = requeued
        self.gave_up = gave_up


class Scheduler:
    """Matches jobs from a ``JobFeed`` to slots from a ``NodePool``.
    ``max_running`` (0: unlimited) caps slots busy at once (--max-nodes)."""

    def __init__(self, pool, feed, max_running=0, max_attempts=0, job_failure="node",
                 retries=None, halt=None):
        self.pool = pool
        self.feed = feed
        self.max_running = max_running
        self.max_attempts = max_attempts
        self.job_failure = job_failure
        self.retries = retries  # None: a job's own failure is final
        self.halt = halt  # a halt.HaltRule, or None
        self.halted = None  # a halt.Halted once the rule is met
        self.completed = 0
        self.given_up = []  # jobs that will not be tried again
        self._last_counted = None  # (job, host, failure): the last end --halt counts

    def next_assignment(self):
        """A (job, slot) pair to start now, or None."""
        if self.halting() or (self.max_running and self.pool.busy >= self.max_running):
            return None
        slot = self.pool.acquire()
        if slot is None:
            return None
        waiting = []  # jobs that wait for a host where they failed less
        try:
            while True:
                job = self.feed.take()
                if job is None:
                    self.pool.put_back(slot)
                    return None
                placed = self._placed(job, slot)
                if placed is not None:
                    return job, placed
                waiting.append(job)
        finally:
            for job in waiting:
                self.feed.requeue(job)

    def _placed(self, job, slot):
        """The slot ``job`` runs on, now that ``slot`` is free: ``slot``,
        unless --retries and the job failed on its host more often than on
        another usable host; then a free slot on such a host (``slot`` is put
        back), or None while none is free."""
        if self.retries is None or not job.failures:
            return slot
        failed = collections.Counter(name for name, failure in job.failures
                                     if failure.kind is not Kind.THROTTLED)
        usable = [name for name, host in self.pool.hosts.items() if host.usable]
        fewest = min(failed[name] for name in usable)
        if failed[slot.host.name] == fewest:
            return slot
        better = self.pool.acquire_among([name for name in usable if failed[name] == fewest])
        if better is not None:
            self.pool.put_back(slot)
        return better

    def next_pinned_assignment(self):
        """Like next_assignment, for jobs pinned to one host each."""
        if self.halting() or (self.max_running and self.pool.busy >= self.max_running):
            return None
        hosts = self.pool.hosts
        job = self.feed.take_pinned(lambda name: hosts[name].free and not hosts[name].retired)
        if job is None:
            return None
        return job, self.pool.acquire_on(job.host)

    def slots_in_demand(self):
        """How many slots the jobs could use at once now: those running or
        waiting, or every live slot while job input is still coming; never
        more than ``max_running``."""
        if self.halted:
            wanted = self.pool.busy
        elif self.feed.input_done:
            wanted = self.pool.busy + self.feed.waiting_count
        else:
            wanted = self.pool.live_slots
        return min(wanted, self.max_running) if self.max_running else wanted

    def attempt_finished(self, job, slot, failure):
        """Record an attempt's end (``failure`` None for success), hand its
        slot back (held, if the connection was throttled: it rests until
        readmitted) and return the Outcome."""
        if failure is None:
            self.pool.release(slot)
            self.completed += 1
            self._count_for_halt("success", job, slot, None)
            return Outcome()
        job.failures.append((slot.host.name, failure))
        if failure.kind is Kind.THROTTLED:
            # The host is busy, not broken: the job goes first again.
            self.pool.hold(slot)
            self.feed.requeue(job)
            return Outcome(requeued=True)
        self.pool.release(slot)
        if blames_node(failure, self.job_failure):
            # Its node is retired: a pinned job has nowhere else to go.
            again = job.host is None
        else:
            again = self._tries_left(job)
        if not again or self._attempts_used_up(job):
            self.given_up.append(job)
            self._count_for_halt("fail", job, slot, failure)
            return Outcome(gave_up=True)
        self.feed.retry_later(job)
        return Outcome(requeued=True)

    def _tries_left(self, job):
        """--retries: whether ``job`` may run again after failing on its own.
        Failures that were its nodes' (a refused or lost connection) do not
        count: those nodes are retired, as without --retries."""
        if self.retries is None:
            return False
        own = sum(1 for _, failure in job.failures if not blames_node(failure, "job"))
        return not self.retries or own < self.retries

    def _count_for_halt(self, what, job, slot, failure):
        if self.halt is not None and self.halt.what == what:
            self._last_counted = (job, slot.host.name, failure)

    def halting(self):
        """--halt's WHEN ("soon" or "now") from the moment its rule is met
        (``halted`` then says by which job), else None."""
        if self.halted is None and self._last_counted is not None:
            counted = self.completed if self.halt.what == "success" else len(self.given_up)
            expected, known = self.feed.expected_total
            if self.halt.met(counted, expected - self.feed.skipped, known):
                self.halted = Halted(self.halt, *self._last_counted)
        return self.halted and self.halt.when

    def _attempts_used_up(self, job):
        if not self.max_attempts:
            return False
        failed_hosts = {name for name, failure in job.failures
                        if failure.kind is not Kind.THROTTLED}
        return len(failed_hosts) >= self.max_attempts

    def nothing_more_can_run(self):
        """With no job running: whether the run is over (every job done,
        halted, no usable slot, or no slot will ever take what is left)."""
        if self.done() or self.halted or not self.pool.usable:
            return True
        if self.pool.waiting_for_admission:
            return False
        # Input is all read, yet nothing could start: no slot will ever take
        # what is left (pinned to retired hosts, or slots used up).
        return self.feed.input_done

    def done(self):
        """True when every job has been read and none is waiting or running."""
        return not self.pool.busy and self.feed.empty

    def not_completed(self):
        """Jobs that did not complete, in order: given up, rejected when
        read, or still waiting."""
        jobs = self.given_up + self.feed.rejected + self.feed.waiting()
        return sorted(jobs, key=lambda job: job.seq)
