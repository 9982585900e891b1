"""Attempts: one job running on one slot, from its start to its verdict.

An ``Attempt`` is the handler its transport reports to (output, end, or
"never started"); ``Attempts`` keeps the running ones and their timers
(``--timeout``, the start deadline), stops them, and turns each end into a
Verdict (failures.judge) written to the joblog and the job's output.  What
the verdict means for the job, the node and the run is the run's business
(run.py): it hears of every attempt through ``AttemptsOwner``.
"""

import time

from .errors import LocalIOError
from .failures import judge, not_delivered, returned, start_overdue, stopped_by_clstr, timed_out
from .output.sinks import spill_files
from .returnfiles import Returns
from .transport.interface import START_GRACE, AttemptHandler, stop_grace
from .transport.prelude import attempt_prelude


class AttemptsOwner:
    """What ``Attempts`` tells the run."""

    def attempt_ended(self, attempt, verdict):
        """``attempt`` is over and recorded; ``verdict.failure`` None: the
        job completed."""
        raise NotImplementedError

    def start_failed(self, attempt, error):
        """``attempt`` could not start for a local reason (``error``: an
        OSError, or a LocalIOError for one of clstr's files); nothing ran."""
        raise NotImplementedError

    def master_restarting(self, attempt):
        """``attempt`` never started: its master is being started again."""
        raise NotImplementedError

    def guarded(self, what, write, *args):
        """Run one of clstr's own writes; a failure stops the run."""
        raise NotImplementedError


class Attempt(AttemptHandler):
    """One job running on one slot: its transport session, output delivery,
    and what clstr itself did to it (``stopped``: a Failure if clstr
    stopped it).  Its transport reports to it, and it to ``attempts``."""

    __slots__ = ("attempts", "job", "slot", "_plan", "_prelude", "command", "session", "out",
                 "started", "received", "timer", "start_timer", "stopped", "reports")

    def __init__(self, attempts, job, slot, plan, reports):
        self.attempts = attempts
        self.job = job
        self.slot = slot
        self._plan = plan
        self._prelude = None
        # What this attempt runs: a template's {%} and {host} are this
        # slot's (the job's own command keeps them as written).
        self.command = job.command_on(slot)
        self.session = None
        self.out = None
        self.started = time.time()
        self.received = 0
        self.timer = None
        self.start_timer = None
        # clstr's own reason when it stopped the attempt (a Failure).
        self.stopped = None
        # The wrapper's start and end reports (endreport.py).
        self.reports = reports

    @property
    def prelude(self):
        """The shell text the job's process runs first (its environment,
        its directory), for this slot and host: built when the transport
        asks for it (a worker's job never does: its worker has the slot's)."""
        if self._prelude is None:
            self._prelude = attempt_prelude(self._plan, self.job, self.slot)
        return self._prelude

    def output(self, stream, data):
        self.attempts.output(self, stream, data)

    def ended(self, code, failure):
        self.attempts.ended(self, code, failure)

    def unstarted(self, error):
        self.attempts.unstarted(self, error)


class Attempts:
    """The running attempts of one run, started through ``transport`` with
    output to ``delivery`` and records to ``joblog`` (or None).  With
    --return (returnfiles.Returns), an attempt whose job completed is over
    only once its files are here."""

    def __init__(self, loop, plan, transport, delivery, joblog, owner):
        self._loop = loop
        self._returns = None
        if plan.returns:
            self._returns = Returns(loop, transport, plan.returns, plan.output_dir_path,
                                    plan.workdir, owner.guarded)
        self._plan = plan
        self._transport = transport
        self._delivery = delivery
        self._joblog = joblog
        self._owner = owner
        self._running = set()
        self._paused = False
        # A job that has not started this long after its attempt did is
        # given up (a transport that hangs before the job: a silent host
        # behind --exec, a login that never ends).
        self._start_deadline = plan.ssh.connect_timeout + START_GRACE

    def __len__(self):
        return len(self._running)

    def __iter__(self):
        return iter(list(self._running))

    def delivery_files(self):
        """Where job output goes besides the sinks, for error messages."""
        return self._plan.output_dir_path or spill_files()

    def start(self, job, slot):
        """Start ``job`` on ``slot``; returns whether it started (the owner
        hears why not)."""
        attempt = Attempt(self, job, slot, self._plan, self._transport.report_reader())
        try:
            attempt.out = self._delivery.open(job.seq, slot.host.name)
        except OSError as error:
            self._owner.start_failed(attempt, LocalIOError(self.delivery_files(), error))
            return False
        except LocalIOError as error:
            self._owner.start_failed(attempt, error)
            return False
        try:
            attempt.session = self._transport.open(attempt, attempt)
        except OSError as error:
            self._close_output(attempt, False)
            self._owner.start_failed(attempt, error)
            return False
        job.attempts += 1
        self._running.add(attempt)
        if self._plan.timeout:
            attempt.timer = self._loop.call_later(
                self._plan.timeout, lambda: self.stop(attempt, timed_out(self._plan.timeout)))
        if self._paused:
            attempt.session.pause()
        else:
            self._arm_start_deadline(attempt)
        return True

    def _close_output(self, attempt, completed):
        if attempt.out is not None:
            self._owner.guarded(self.delivery_files(), attempt.out.close, completed)

    # -- the start deadline ----------------------------------------------------

    def _arm_start_deadline(self, attempt):
        """Give the attempt's job until the deadline to start.  Not while
        output is paused: a transport blocked writing to us cannot report."""
        if attempt.reports.started or attempt.start_timer is not None:
            return
        attempt.start_timer = self._loop.call_later(self._start_deadline,
                                                    lambda: self._start_overdue(attempt))

    @staticmethod
    def _disarm_start_deadline(attempt):
        if attempt.start_timer is not None:
            attempt.start_timer.cancel()
            attempt.start_timer = None

    def _start_overdue(self, attempt):
        """The job has not started in time: its node does not answer (under
        Slurm, a step still pending: the controller is busy, no node is
        dead), so the attempt is stopped and the job requeued."""
        attempt.start_timer = None
        if attempt.reports.started or attempt.stopped is not None:
            return
        self.stop(attempt, start_overdue(self._start_deadline, self._plan.slurm))

    # -- what clstr does to attempts ---------------------------------------------

    def stop(self, attempt, reason):
        """Stop an attempt (``reason``: a Failure): the transport closes its
        stdin, and the remote wrapper then stops the job and all it started,
        and reports how it ended.  A job that has already reported its end
        is not stopped: it completed before clstr asked."""
        if attempt.stopped is None and attempt.reports.status is None:
            attempt.stopped = reason
        self._disarm_start_deadline(attempt)
        attempt.session.stop(stop_grace(attempt.reports.started))

    def stop_all(self, reason=None):
        """Stop every attempt, for ``reason`` (a Failure; None: stopped by
        clstr, as for Ctrl-C)."""
        reason = reason or stopped_by_clstr()
        for attempt in self:
            self.stop(attempt, reason)

    def kill_all(self):
        """The run is over: leave every attempt at once."""
        for attempt in self:
            attempt.session.kill()
        self._running.clear()

    def pause(self, pressed):
        """A sink is backed up (``pressed``): stop reading every attempt
        until it drains; the start deadlines wait meanwhile."""
        self._paused = pressed
        for attempt in self._running:
            if pressed:
                attempt.session.pause()
                self._disarm_start_deadline(attempt)
            else:
                attempt.session.resume()
                self._arm_start_deadline(attempt)

    def entries(self):
        """(host, job brief) of each running attempt, in job order."""
        running = sorted(self._running, key=lambda a: a.job.seq)
        return [(a.slot.host.name, a.job.brief) for a in running]

    # -- what transports say --------------------------------------------------

    def output(self, attempt, stream, data):
        if attempt.reports.started:
            self._disarm_start_deadline(attempt)
        attempt.received += len(data)
        # Sinks report their own errors; this catches --output-dir files
        # and --group's temporary files.
        self._owner.guarded(self.delivery_files(), attempt.out.data, stream, data)

    def unstarted(self, attempt, error):
        """The transport found that ``attempt`` never started (``error``:
        see AttemptHandler.unstarted)."""
        self._forget(attempt)
        attempt.job.attempts -= 1
        self._close_output(attempt, False)
        if error is not None:
            self._owner.start_failed(attempt, error)
        else:
            self._owner.master_restarting(attempt)

    def _forget(self, attempt):
        self._running.discard(attempt)
        self._disarm_timers(attempt)

    def _disarm_timers(self, attempt):
        if attempt.timer:
            attempt.timer.cancel()
            attempt.timer = None
        self._disarm_start_deadline(attempt)

    def ended(self, attempt, code, failure):
        job = attempt.job
        undelivered = attempt.reports.undelivered
        if undelivered is not None:
            undelivered = not_delivered(undelivered, len(attempt.command))
        verdict = judge(failure, code, attempt.reports.started, attempt.reports.status,
                        attempt.stopped, undelivered)
        if verdict.failure is None and self._returns is not None:
            # Still running (stopped, killed, paused as one) while its files
            # come: its job's time is over (--timeout), not its attempt.
            self._disarm_timers(attempt)
            attempt.session = self._returns.fetch(
                job, attempt.slot,
                lambda failure: self._over(attempt, returned(verdict, failure)))
            return
        self._over(attempt, verdict)

    def _over(self, attempt, verdict):
        """The attempt is over: recorded, its output closed, its owner told."""
        self._forget(attempt)
        job = attempt.job
        if self._joblog:
            self._owner.guarded(self._joblog.path, self._joblog.record, job.seq,
                                attempt.slot.host.name, attempt.started,
                                time.time() - attempt.started, attempt.received,
                                verdict.exitval, verdict.signal, job.text)
        self._close_output(attempt, self._delivery.keeps(verdict.failure))
        self._owner.attempt_ended(attempt, verdict)
