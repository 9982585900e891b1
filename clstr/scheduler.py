"""Policy: which job runs on which slot, and what a finished attempt means.

No I/O here: the runner asks for assignments and reports results, so the rules
can be tested with synthetic events.

The rule from clstr 0.1.0: ssh exiting non-zero cannot be told apart from the
node failing, so the node is assumed broken.  The job goes to the back of the
queue to run elsewhere and the host gets no more work (its other running jobs may
finish).  Users rely on this to filter nodes (``[ -z "$(users)" ] && job``).
Refinements, each chosen by the user or forced by ssh's nature:
- ``job_failure="job"``: a job's own non-zero exit fails that job only;
- ``max_attempts``: a job that failed on that many nodes is given up;
- a connection throttled by sshd's MaxStartups is transient: the slot backs
  off and retries, and the host is retired only after several in a row;
- a job killed by ``--timeout`` failed on its own: not retried, node kept;
- so did a job whose command the node could not store (``not delivered``).
"""

import random

from .failures import Kind

# A host whose connections are throttled this many times in a row, while none
# of its jobs runs, is retired: it is not merely busy.
MAX_THROTTLED = 6
THROTTLE_BACKOFF = 0.25  # seconds, doubled for each throttled attempt in a row
THROTTLE_BACKOFF_MAX = 4.0


def throttle_backoff(count, rng):
    """Seconds to wait after the ``count``-th throttled attempt in a row:
    exponential, capped, with jitter so that slots do not retry in step."""
    return min(THROTTLE_BACKOFF_MAX, THROTTLE_BACKOFF * 2 ** (count - 1)) * rng.uniform(0.5, 1.5)


class Outcome:
    """What an attempt's end changed: ``retired`` (host name or None),
    ``requeued``, ``gave_up`` (the job will not be tried again) and
    ``backoff`` (seconds the slot must rest before it is admitted again, or
    None)."""

    __slots__ = ("retired", "requeued", "gave_up", "backoff")

    def __init__(self, retired=None, requeued=False, gave_up=False, backoff=None):
        self.retired = retired
        self.requeued = requeued
        self.gave_up = gave_up
        self.backoff = backoff


class Scheduler:
    """Matches jobs from a ``JobFeed`` to slots from a ``NodePool``.
    ``max_running`` (0: unlimited) caps slots busy at once (--max-nodes)."""

    def __init__(self, pool, feed, max_running=0, max_attempts=0, job_failure="node", rng=None):
        self._rng = rng or random.Random()
        self.pool = pool
        self.feed = feed
        self.max_running = max_running
        self.max_attempts = max_attempts
        self.job_failure = job_failure
        self.completed = 0
        self.given_up = []  # jobs that will not be tried again
        self._throttled = {}  # host name -> throttled attempts in a row

    def next_assignment(self):
        """A (job, slot) pair to start now, or None."""
        if self.max_running and self.pool.busy >= self.max_running:
            return None
        slot = self.pool.acquire()
        if slot is None:
            return None
        job = self.feed.take()
        if job is None:
            self.pool.put_back(slot)
            return None
        return job, slot

    def next_pinned_assignment(self):
        """Like next_assignment, for jobs pinned to one host each."""
        if self.max_running and self.pool.busy >= self.max_running:
            return None
        hosts = self.pool.hosts
        job = self.feed.take_pinned(lambda name: hosts[name].free and not hosts[name].retired)
        if job is None:
            return None
        return job, self.pool.acquire_on(job.host)

    def attempt_finished(self, job, slot, failure):
        """Record an attempt's end (``failure`` None for success) and return
        the Outcome."""
        host = slot.host
        if failure is None:
            self.pool.release(slot)
            self._throttled.pop(host.name, None)
            self.completed += 1
            return Outcome()
        job.failures.append((host.name, failure))
        if failure.kind is Kind.THROTTLED:
            return self._throttled_attempt(job, slot)
        self.pool.release(slot)
        outcome = Outcome()
        job_only = failure.kind in (Kind.TIMEOUT, Kind.NOT_DELIVERED) or (
            failure.kind is Kind.JOB_EXIT and self.job_failure == "job")
        if not job_only and not host.retired:
            self.pool.retire(host.name, failure)
            outcome.retired = host.name
        if job_only or job.host is not None or self._attempts_used_up(job):
            self.given_up.append(job)
            outcome.gave_up = True
        else:
            self.feed.retry_later(job)
            outcome.requeued = True
        return outcome

    def _attempts_used_up(self, job):
        if not self.max_attempts:
            return False
        failed_hosts = {name for name, failure in job.failures
                        if failure.kind is not Kind.THROTTLED}
        return len(failed_hosts) >= self.max_attempts

    def _throttled_attempt(self, job, slot):
        # sshd dropped the connection before key exchange (MaxStartups): the
        # host is busy, not broken.  Rest the slot and try again later.
        # A host with jobs running is alive, however often it throttles.
        name = slot.host.name
        count = self._throttled[name] = self._throttled.get(name, 0) + 1
        self.feed.requeue(job)
        if count >= MAX_THROTTLED and slot.host.running == 1:
            self.pool.release(slot)
            self.pool.retire(name, job.failures[-1][1])
            return Outcome(retired=name, requeued=True)
        self.pool.hold(slot)
        return Outcome(requeued=True, backoff=throttle_backoff(count, self._rng))

    def done(self):
        """True when every job has been read and none is waiting or running."""
        return not self.pool.busy and self.feed.empty

    def not_completed(self):
        """Jobs that did not complete, in order: given up, rejected when
        read, or still waiting."""
        jobs = self.given_up + self.feed.rejected + self.feed.waiting()
        return sorted(jobs, key=lambda job: job.seq)
