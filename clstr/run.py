"""A run: wires the pieces for one plan and owns its life (start, signals,
stop, shut-down).

Each piece knows only what it is handed: the transport (transport/choice.py)
opens attempts and starts masters; attempts.py turns each attempt's end
into a verdict and records it; the scheduler decides what a verdict means
for the job, node health (nodehealth.py, carried out by nodecare.py) what
it means for the node, startlimits.py what this machine's limits allow.
Every failure of clstr's own I/O comes here (``local_io_failed``) and
stops the run, never a node.
"""

import os
import random

from .attempts import Attempts, AttemptsOwner
from .errors import LocalIOError, guarded
from .exits import EXIT_BROKEN_PIPE, EXIT_INCOMPLETE, EXIT_LOCAL_IO, EXIT_OK, SIGNAL_EXITS
from .failures import stopped_by_halt
from .limits import out_of_resources
from .loop import EventLoop
from .nodecare import NodeCare
from .nodehealth import NodeHealth
from .nodes import NodePool
from .output.delivery import Delivery
from .output.sinks import open_sinks, write_out
from .privatedir import PrivateDirectory
from .records import run_report
from .scheduler import Scheduler
from .sendfiles import Sends
from .startlimits import StartLimits
from .status import RunWatch
from .transport.choice import transport_for
from .transport.interface import RunEvents


class Run(RunEvents, AttemptsOwner):
    """Runs ``plan`` with jobs from ``feed`` to the end; ``run()`` returns
    clstr's exit status.  Its transport tells it about masters
    (transport.RunEvents), its attempts about their ends (AttemptsOwner)."""

    def __init__(self, plan, feed, joblog=None):
        self.plan = plan
        self.feed = feed
        self.joblog = joblog
        self.loop = EventLoop()
        # Masters' sockets and logs, and ssh's log of each attempt.
        self.private = PrivateDirectory()
        self.pool = NodePool(plan.hosts, max_uses=plan.max_node_uses)
        self.transport = transport_for(plan, self.loop, self.private, self.pool, self)
        self.scheduler = Scheduler(self.pool, feed, max_running=plan.max_nodes,
                                   max_attempts=plan.max_attempts, job_failure=plan.job_failure,
                                   retries=plan.retries, halt=plan.halt)
        health = NodeHealth(random.Random(), job_failure=plan.job_failure,
                            retry_after=plan.retry_nodes, masters=self.transport.has_masters)
        sends = Sends(self.loop, self.transport, plan.sends, plan.workdir,
                      lambda name, failure: self.nodes.sent(name, failure),
                      self.local_io_failed) if plan.sends else None
        self.nodes = NodeCare(self.loop, self.pool, self.transport, health, self.note,
                              self._dispatch, lambda: self._stopping or self.scheduler.done(),
                              sends)
        wanted = len(plan.hosts)
        self.limits = StartLimits(self.loop, self.pool, self.transport,
                                  min(wanted, plan.max_nodes) if plan.max_nodes else wanted,
                                  self._message, lambda: self._stop(EXIT_INCOMPLETE),
                                  self._dispatch)
        self.exit_status = None
        self._stopping = False
        self._leaving = False  # a second signal: drop unwritten output, exit now
        self._io_error = None  # the first LocalIOError of the run
        self._report_when_stopped = False
        self._halt_said = False
        self.sinks = open_sinks(self.loop, plan.stdout_fd, plan.stderr_fd,
                                {1: plan.stdout_path or "the --stdout file",
                                 2: plan.stderr_path or "the --stderr file"},
                                self._pressure, lambda: self._stop(EXIT_BROKEN_PIPE),
                                self.local_io_failed)
        self.delivery = Delivery(self.sinks, tag=plan.tag, group=plan.group,
                                 output_dir=plan.output_dir, gather=plan.gather,
                                 keep_order=plan.keep_order)
        self.attempts = Attempts(self.loop, plan, self.transport, self.delivery, joblog, self)
        self.loop.handle_errors((LocalIOError,), self.local_io_failed)
        self.watch = RunWatch(self.loop, plan, self.sinks.values(), self.scheduler, feed,
                              self.pool, self.attempts)

    def guarded(self, what, write, *args):
        """One of clstr's own writes (joblog, -A, --output-dir): a failure
        stops the run as any local I/O error does."""
        return guarded(what, write, args, self.local_io_failed)

    @property
    def _index_path(self):
        return self.plan.output_dir_path and os.path.join(self.plan.output_dir_path, "index.tsv")

    # -- the run ----------------------------------------------------------------

    def run(self):
        for signum in SIGNAL_EXITS:
            self.loop.add_signal_handler(signum, lambda s=signum: self._interrupted(s))
        try:
            self.limits.fit(self.plan, self.scheduler)
            self._write_active_nodes()
            self.feed.start(self.loop, self._dispatch)
            self.nodes.start()
            self._dispatch()
            if self.exit_status is None:
                self.loop.run()
        finally:
            self._shut_down()
        return self.exit_status

    def _dispatch(self):
        """Start every attempt that can start now; end the run when nothing
        more can happen."""
        if self._stopping or self._halt_now():
            return
        self.transport.prepare(self.scheduler.slots_in_demand)
        next_assignment = (self.scheduler.next_pinned_assignment if self.plan.pinned
                           else self.scheduler.next_assignment)
        while not self._stopping and not self.limits.starved:
            assignment = next_assignment()
            if assignment is None:
                break
            if self.attempts.start(*assignment):
                self.limits.started()
        self.watch.changed()
        if not self.pool.busy and self.scheduler.nothing_more_can_run():
            self._finish()

    def _halt_now(self):
        """Whether --halt's rule has been met with WHEN ``now``: the running
        jobs are then stopped as Ctrl-C would stop them (no node is blamed,
        no connection counted lost) and the run ends with its report.  With
        ``soon`` the scheduler starts no new job and the running ones
        finish; clstr says so once."""
        when = self.scheduler.halting()
        if when is None or self._halt_said:
            return False
        self._halt_said = True
        halted = self.scheduler.halted
        if when == "now":
            self._report_when_stopped = True
            self._stop(EXIT_OK if halted.succeeded else EXIT_INCOMPLETE,
                       stopped_by_halt(halted.rule))
            return True
        if self.pool.busy:
            self._message("--halt %s reached: starting no more jobs, waiting for %d running"
                          % (halted.rule, self.pool.busy))
        return False

    # -- what the transport says (RunEvents) ------------------------------------

    def master_up(self, host, group, unavailable):
        self._master_started(host, group, None, unavailable)

    def master_failed(self, host, group, failure):
        self._master_started(host, group, failure)

    def _master_started(self, host, group, failure, unavailable=None):
        if self._stopping:
            return
        if failure is None:
            self.limits.started()
        self.nodes.master_started(host, group, failure, unavailable)
        self._dispatch()

    def master_gone(self, host, group, expired):
        return self.nodes.master_gone(host, expired)

    def masters_short_of(self, covered, error):
        self.limits.say_slot_limit(covered, error)
        self.limits.short_of(error, len(self.attempts))

    def note(self, text):
        if self.plan.verbose and not self._stopping:
            self._message(text)

    # -- what attempts say (AttemptsOwner) ------------------------------------------

    def start_failed(self, attempt, error):
        """No node is to blame: the job goes back to the front of the
        queue.  Out of fds or processes, the slot rests until a job ends."""
        self.feed.requeue(attempt.job)
        if out_of_resources(error):
            self.limits.slot_rests(attempt.slot, len(self.attempts), error)
            return
        self.pool.put_back(attempt.slot)
        if isinstance(error, LocalIOError):
            self.local_io_failed(error)
            return
        # Not even one ssh can start (ssh missing): stop with what we have.
        self._message("cannot start ssh: %s" % error.strerror)
        self._stop(EXIT_INCOMPLETE)

    def master_restarting(self, attempt):
        """The job goes back to the queue, and its slot waits for the new
        master."""
        self.feed.requeue(attempt.job)
        attempt.slot.uses -= 1
        self.pool.hold(attempt.slot)
        self.loop.call_later(0, self._dispatch)

    def attempt_ended(self, attempt, verdict):
        self.limits.job_ended()
        job, host, failure = attempt.job, attempt.slot.host.name, verdict.failure
        if self.nodes.no_node_can_cure(attempt, failure) and not self._stopping:
            # Every node would fail the same way (Slurm's step limit, say):
            # stop instead of retiring them one by one.
            self._message("%s: %s: no node can run jobs, stopping" % (host, failure.detail))
            # Unlike Ctrl-C, nobody asked for this stop: say what is left.
            self._report_when_stopped = True
            self._stop(EXIT_INCOMPLETE)
        if self._stopping and failure is not None:
            job.failures.append((host, failure))
            self.pool.release(attempt.slot)
            self.feed.requeue(job)
            self._maybe_finish_stop()
            return
        outcome = self.scheduler.attempt_finished(job, attempt.slot, failure)
        if failure is None or outcome.gave_up:
            self.guarded(self._index_path, self.delivery.record, job.seq, failure, host, job.text)
        if self._stopping:
            # It completed before clstr's stop reached it.
            self._maybe_finish_stop()
            return
        self.nodes.attempt_ended(attempt.slot.host, failure)
        if failure:
            self.note("job %d on %s: %s; %s" % (job.seq, host, failure,
                                                "requeued" if outcome.requeued else "given up"))
        self._dispatch()
        if self.limits.waiting and not self.limits.starved and not self._stopping:
            # The slot this job freed went first; now one that rests.
            self.limits.eased()
            self._dispatch()

    # -- ending -------------------------------------------------------------

    def _finish(self):
        incomplete = self._incomplete()
        halted = self.scheduler.halted
        ok = (not incomplete and self.feed.input_done) or (halted and halted.succeeded)
        self._stopping = True  # nothing new starts now
        self.exit_status = EXIT_OK if ok else EXIT_INCOMPLETE
        self.delivery.finish()
        self._report(incomplete)
        self.loop.stop()

    def _incomplete(self):
        """The jobs that did not complete, the rest of the job files read."""
        incomplete = self.scheduler.not_completed()
        if incomplete or not self.feed.input_done:
            self.feed.drain_regular_files()
            incomplete = self.scheduler.not_completed()
        return incomplete

    def _report(self, incomplete):
        for line in run_report(self.pool, self.feed, incomplete, self.plan.verbose,
                               self.plan.max_node_uses, self.scheduler.halted):
            self._message(line)

    def _interrupted(self, signum):
        if self._stopping:
            # A second signal, or one while the last output is written: leave
            # now, without what the reader has not taken.
            self.exit_status = SIGNAL_EXITS[signum]
            self._leaving = True
            self.loop.stop()
            return
        self._stop(SIGNAL_EXITS[signum])

    def local_io_failed(self, error):
        """clstr could not write one of its own files (``error``, a
        LocalIOError).  No node is to blame: stop the jobs as Ctrl-C does
        (they count as interrupted and not completed, never as failures of
        their nodes) and end with EXIT_LOCAL_IO."""
        if self._io_error is None:
            self._io_error = error
            self._message("cannot write %s" % error)
        if not self._leaving:
            self.exit_status = EXIT_LOCAL_IO
        self._stop(EXIT_LOCAL_IO)

    def _stop(self, status, reason=None):
        """Stop every running attempt (for ``reason``, a Failure; None:
        stopped by clstr), then end the run with ``status``."""
        if self._stopping:
            return
        self._stopping = True
        self.exit_status = status
        self.attempts.stop_all(reason)
        self._maybe_finish_stop()

    def _maybe_finish_stop(self):
        if not len(self.attempts):
            # What completed before the stop (Ctrl-C on a hung node) is shown.
            self.delivery.finish()
            if self._report_when_stopped:
                self._report(self._incomplete())
            self.loop.stop()

    def _shut_down(self):
        self.attempts.kill_all()
        self.nodes.shutdown()
        self.transport.shutdown()
        self.private.remove()
        self.feed.close()
        self._write_active_nodes()
        self.guarded(self._index_path, self.delivery.close)
        if self.joblog:
            self.guarded(self.joblog.path, self.joblog.close)
        # Last, so that what the files above had to say is written too.
        if not self._leaving:
            # Signals are still handled meanwhile: one drops the rest and
            # leaves (a stalled reader never makes clstr unkillable).
            write_out(self.loop, self.sinks.values(), lambda: self._leaving)
        self.watch.finish()
        for sink in set(self.sinks.values()):
            sink.close()
        self.loop.close()

    # -- watching -----------------------------------------------------------

    def _pressure(self, pressed):
        """A sink is backed up: stop reading children until it drains."""
        self.attempts.pause(pressed)

    def _write_active_nodes(self):
        if self.watch.active_nodes:
            self.guarded(self.plan.active_nodes.shown, self.watch.active_nodes.write)

    def _message(self, text):
        """One line from clstr itself, on stderr, in order with job output."""
        self.sinks[0].write(self, ("clstr: %s\n" % text).encode("utf-8", "backslashreplace"))
