"""Runs a plan: wires the event loop, ssh children, the scheduler and output.

This is the only module that knows all the others; each of them knows only
what it is handed.
"""

import collections
import errno
import os
import random
import tempfile
import time

from .delivery import Delivery
from .errors import LocalIOError
from .exits import EXIT_BROKEN_PIPE, EXIT_INCOMPLETE, EXIT_LOCAL_IO, EXIT_OK, SIGNAL_EXITS
from .failures import (
    FirstFailures,
    judge,
    not_delivered,
    start_overdue,
    stopped_by_clstr,
    timed_out,
)
from .limits import GIVE_UP_AFTER, Shortage, limit_words, open_files_limit, out_of_resources
from .loop import EventLoop
from .nodehealth import Backoff, Direct, NodeHealth, Readmit, Reconnect, Retire
from .nodes import NodePool
from .output import Sink
from .privatedir import PrivateDirectory
from .records import failure_report
from .scheduler import Scheduler
from .status import ActiveNodesFile, StatusLine, progress_fields, status_terminal, summary_fields
from .transport import AttemptHandler, RunEvents, stop_grace
from .transportchoice import transport_for

# Files held only for a moment, one at a time: a starting job's two pipe write
# ends, a master's log, the active-nodes file's temporary, with room to spare.
FDS_SPARE = 8
# An attempt whose job has not started --connect-timeout plus this long
# after it was started is given up (a transport that hangs before the job:
# a silent host behind --exec, a login that never ends).  ssh's own
# ConnectTimeout bounds only the TCP connection and the banner; this leaves
# room for a slow key exchange, login and rc files.
START_GRACE = 15.0


class Attempt(AttemptHandler):
    """One job running on one slot: its transport session, output delivery,
    and what clstr itself did to it (``stopped``: a Failure if clstr
    stopped it).  The transport reports to it, and it to its ``run``."""

    __slots__ = ("run", "job", "slot", "session", "out", "started", "received", "timer",
                 "start_timer", "stopped", "reports")

    def __init__(self, run, job, slot, out, reports):
        self.run = run
        self.job = job
        self.slot = slot
        self.session = None
        self.out = out
        self.started = time.time()
        self.received = 0
        self.timer = None
        self.start_timer = None
        # clstr's own reason when it stopped the attempt (a Failure).
        self.stopped = None
        # The wrapper's start and end reports (endreport.py).
        self.reports = reports

    def output(self, stream, data):
        self.run._output(self, stream, data)

    def ended(self, code, failure):
        self.run._ended(self, code, failure)

    def unstarted(self, error):
        self.run._unstarted(self, error)


def same_file(fd_a, fd_b):
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_fd_count():
    """How many fds this process has open now (a generous guess without
    /proc)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory)) - 1  # listdir's own fd
        except OSError:
            continue
    return 32


def slots_that_fit(limit, in_use, fds_per_job):
    """How many jobs can run at once with ``limit`` open files when
    ``in_use`` are open already (at least one: a run that cannot start even
    one job says so when it tries)."""
    return max(1, (limit - in_use - FDS_SPARE) // fds_per_job)


class Runner(RunEvents):
    """Runs ``plan`` with jobs from ``feed`` to the end; ``run()`` returns
    clstr's exit status.  Its transport tells it about masters
    (transport.RunEvents)."""

    def __init__(self, plan, feed, joblog=None):
        self.plan = plan
        self.feed = feed
        self.joblog = joblog
        self.loop = EventLoop()
        # Masters' sockets and logs, and ssh's log of each attempt.
        self.private = PrivateDirectory()
        self.pool = NodePool(plan.hosts, max_uses=plan.max_node_uses)
        self.transport = transport_for(plan, self.loop, self.private, self.pool, self)
        self.health = NodeHealth(random.Random(), job_failure=plan.job_failure,
                                 retry_after=plan.retry_nodes,
                                 masters=self.transport.has_masters)
        self.scheduler = Scheduler(self.pool, feed, max_running=plan.max_nodes,
                                   max_attempts=plan.max_attempts, job_failure=plan.job_failure)
        self.attempts = set()
        self.exit_status = None
        self._paused = False
        self._stopping = False
        self._leaving = False  # a second signal: drop unwritten output, exit now
        self._io_error = None  # the first LocalIOError of the run
        # Out of fds or processes (limits.py): start no job until one ends.
        self._starved = False
        self._limit_said = False
        self._shortage = Shortage(time.monotonic)
        self._resting = collections.deque()  # slots held since their start failed so
        self._retry_timer = None  # with nothing running: when to try again
        self._started = time.monotonic()
        self._first_failures = FirstFailures()
        self._report_when_stopped = False
        self.sinks = self._make_sinks(plan.stdout_fd, plan.stderr_fd)
        self.delivery = Delivery(self.sinks, tag=plan.tag, group=plan.group,
                                 output_dir=plan.output_dir)
        self.loop.handle_errors((LocalIOError,), self._local_io_failed)
        self.status = None
        terminal = status_terminal() if plan.status else None
        if terminal is not None:
            self.status = StatusLine(self.loop, terminal, self._status_fields,
                                     self._summary_fields)
            for sink in set(self.sinks.values()):
                if os.isatty(sink.fd) and same_file(sink.fd, terminal):
                    sink.before_write = self.status.clear
        self.active_nodes = None
        if plan.active_nodes:
            self.active_nodes = ActiveNodesFile(self.loop, plan.active_nodes, self._active_entries)
            # Its own timer calls write(): a failure there must stop the run
            # like any other write of clstr's own.
            write = self.active_nodes.write
            self.active_nodes.write = lambda: self._guarded(plan.active_nodes.shown, write)

    def _make_sinks(self, stdout_fd, stderr_fd):
        """Sinks for jobs' stdout (1), jobs' stderr (2) and clstr's own
        messages (0).  Fds that are the same file share one sink, or partial
        writes to a shared pipe could cut each other's lines."""
        sinks = {}
        # What a write error names: "stdout"/"stderr", or the -o/-e file.
        std_names = {1: "stdout", 2: "stderr"}
        file_names = {1: self.plan.stdout_path or "the --stdout file",
                      2: self.plan.stderr_path or "the --stderr file",
                      0: "stderr"}
        for key, fd in ((1, stdout_fd), (2, stderr_fd), (0, 2)):
            for other in sinks.values():
                if same_file(other.fd, fd):
                    sinks[key] = other
                    break
            else:
                name = std_names.get(fd) or file_names[key]
                # A closed stdout pipe is `clstr | head`: 141.  Any other
                # reader gone (stderr's, an -e FIFO's) is a write error.
                on_broken = self._broken_pipe if key == 1 else (
                    lambda name=name: self._local_io_failed(LocalIOError(
                        name, OSError(errno.EPIPE, os.strerror(errno.EPIPE)))))
                sinks[key] = Sink(self.loop, fd, self._pressure, on_broken, name=name,
                                  on_error=self._local_io_failed)
        return sinks

    def _guarded(self, what, write, *args):
        """Run one of clstr's own writes (joblog, -A, --output-dir); if it
        fails, stop the run as for any local I/O error.  Returns whether it
        succeeded."""
        try:
            write(*args)
            return True
        except LocalIOError as error:
            self._local_io_failed(error)
        except OSError as error:
            self._local_io_failed(LocalIOError(what, error))
        return False

    # -- the run ----------------------------------------------------------------

    def run(self):
        for signum in SIGNAL_EXITS:
            self.loop.add_signal_handler(signum, lambda s=signum: self._interrupted(s))
        try:
            self._fit_slots_to_open_files_limit()
            if self.active_nodes:
                self.active_nodes.write()
            self.feed.start(self.loop, self._dispatch)
            self._dispatch()
            if self.exit_status is None:
                self.loop.run()
        finally:
            self._shut_down()
        return self.exit_status

    def _dispatch(self):
        """Start every attempt that can start now; end the run when nothing
        more can happen."""
        if self._stopping:
            return
        self.transport.prepare(self.scheduler.slots_in_demand)
        next_assignment = (self.scheduler.next_pinned_assignment if self.plan.pinned
                           else self.scheduler.next_assignment)
        while not self._stopping and not self._starved:
            assignment = next_assignment()
            if assignment is None:
                break
            self._start(*assignment)
        self._changed()
        if not self.pool.busy and self._nothing_more_can_run():
            self._finish()

    def _nothing_more_can_run(self):
        if self.scheduler.done() or not self.pool.usable:
            return True
        if self.pool.waiting_for_admission:
            return False
        # Input is all read, yet nothing could start: no slot will ever take
        # what is left (pinned to retired hosts, or slots used up).
        return self.feed.input_done

    # -- masters ------------------------------------------------------------

    def master_up(self, host, group, unavailable):
        self._master_started(host, group, None, unavailable)

    def master_failed(self, host, group, failure):
        self._master_started(host, group, failure)

    def master_gone(self, host, group, expired):
        direct = self.health.master_gone(host, expired)
        self._apply(direct)
        return not direct

    def masters_short_of(self, covered, error):
        self._say_slot_limit(covered, error)
        self._short_of(error)

    def note(self, text):
        if self.plan.verbose and not self._stopping:
            self._message(text)

    def _start_master(self, host, group):
        if not self._stopping:
            self.transport.start_master(host, group)

    def _master_started(self, host, group, failure, unavailable=None):
        if self._stopping:
            return
        if failure is None:
            self._shortage.eased()
        self._apply(self.health.master_started(self.pool.hosts[host], group, failure,
                                               unavailable))
        self._dispatch()

    # -- node health (nodehealth.py decides, this carries it out) ---------------

    def _apply(self, decisions):
        """Carry out node health's decisions: the pool's part now, delays as
        timers."""
        for decision in decisions:
            name = decision.host
            if isinstance(decision, Retire):
                self.pool.retire(name, decision.failure)
                if self.plan.verbose:
                    self._message("node %s retired: %s" % (name, decision.failure))
                if decision.probe_after is not None:
                    self.loop.call_later(decision.probe_after, lambda name=name: self._probe(name))
            elif isinstance(decision, Backoff):
                self.loop.call_later(decision.seconds, lambda name=name, group=decision.group:
                                     self._try_again(name, group))
            elif isinstance(decision, Readmit):
                self.pool.admit(name, self._admitted(decision))
                if decision.back and self.plan.verbose:
                    self._message("node %s is back" % name)
            elif isinstance(decision, Reconnect):
                # A master coming up admits its slots; failing, it retires
                # the host again with a longer cooldown.
                held = self.pool.hosts[name].held
                for group in sorted({self.transport.master_of(slot) for slot in held}):
                    self._start_master(name, group)
            elif isinstance(decision, Direct) and decision.news and self.plan.verbose:
                self._message("%s: connection sharing unavailable (%s), using direct "
                              "connections" % (name, decision.why))

    def _admitted(self, readmit):
        """Which held slots a Readmit lets take jobs (a test for NodePool.admit)."""
        if readmit.probation:
            first = self.pool.hosts[readmit.host].held[0]
            return lambda slot: slot is first
        if readmit.group is None:
            return lambda slot: True
        return lambda slot: self.transport.master_of(slot) == readmit.group

    def _try_again(self, name, group):
        """A throttled connection's rest is over: the host's held slots take
        jobs again (``group`` None), or the master of ``group`` starts."""
        if group is None:
            self.pool.admit(name)
            self._dispatch()
        else:
            self._start_master(name, group)

    def _probe(self, name):
        """--retry-nodes: try a host retired for a transport failure again,
        as node health says (nodehealth.py).  Pending probes do not keep a
        run alive: it still ends when no live node is left."""
        host = self.pool.hosts[name]
        if self._stopping or not host.retired or self.scheduler.done():
            return
        if not self.pool.reinstate(name):
            return
        if self.plan.verbose:
            self._message("node %s: trying again" % name)
        self._apply(self.health.probe(name))
        self._dispatch()

    # -- attempts -----------------------------------------------------------

    def _start(self, job, slot):
        attempt = Attempt(self, job, slot, None, self.transport.report_reader())
        try:
            attempt.out = self.delivery.open(job.seq, slot.host.name)
        except (OSError, LocalIOError) as error:
            self._not_started(attempt, error, self.plan.output_dir_path)
            return
        try:
            attempt.session = self.transport.open(attempt, attempt)
        except OSError as error:
            self._not_started(attempt, error, None)
            return
        job.attempts += 1
        self.attempts.add(attempt)
        self._shortage.eased()
        if self.plan.timeout:
            attempt.timer = self.loop.call_later(
                self.plan.timeout, lambda: self._kill(attempt, timed_out(self.plan.timeout)))
        if self._paused:
            attempt.session.pause()
        else:
            self._arm_start_deadline(attempt)

    def _arm_start_deadline(self, attempt):
        """Give the attempt's job until the deadline to start.  Not while
        output is paused: a transport blocked writing to us cannot report."""
        if attempt.reports.started or attempt.start_timer is not None:
            return
        attempt.start_timer = self.loop.call_later(
            self.plan.ssh.connect_timeout + START_GRACE, lambda: self._start_overdue(attempt))

    def _disarm_start_deadline(self, attempt):
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
        waited = self.plan.ssh.connect_timeout + START_GRACE
        self._kill(attempt, start_overdue(waited, self.plan.slurm))

    def _unstarted(self, attempt, error):
        """The transport found that ``attempt`` never started (``error``:
        see AttemptHandler.unstarted)."""
        self._unstart(attempt)
        if error is not None:
            self._not_started(attempt, error, None)
            return
        # Its master is being started again: the job goes back to the
        # queue, and the slot waits for the new master.
        self._guarded(self._delivery_files(), attempt.out.close, False)
        self.feed.requeue(attempt.job)
        attempt.slot.uses -= 1
        self.pool.hold(attempt.slot)
        self.loop.call_later(0, self._dispatch)

    def _unstart(self, attempt):
        """Forget an attempt that turned out never to have started."""
        self.attempts.discard(attempt)
        if attempt.timer:
            attempt.timer.cancel()
        self._disarm_start_deadline(attempt)
        attempt.job.attempts -= 1

    def _not_started(self, attempt, error, what):
        """An attempt could not start for a local reason (``what``: the file
        clstr could not create, None for ssh itself).  No node is to blame:
        the job goes back to the front of the queue."""
        if attempt.out is not None:
            self._guarded(self._delivery_files(), attempt.out.close, False)
        self.feed.requeue(attempt.job)
        if out_of_resources(error):
            # Out of fds or processes for now: start nothing until a running
            # job gives some back.  The slot rests meanwhile, so that other
            # slots (a shared connection needs no process) go first.
            attempt.slot.uses -= 1
            self.pool.hold(attempt.slot)
            self._resting.append(attempt.slot)
            self._starved = True
            self._say_slot_limit(len(self.attempts), error)
            self._short_of(error)
            return
        self.pool.put_back(attempt.slot)
        if what is not None or isinstance(error, LocalIOError):
            self._local_io_failed(error if isinstance(error, LocalIOError)
                                  else LocalIOError(what, error))
            return
        # Not even one ssh can start (ssh missing): stop with what we have.
        self._message("cannot start ssh: %s" % error.strerror)
        self._stop(EXIT_INCOMPLETE)

    def _short_of(self, error):
        """A start failed for want of fds or processes.  A running job will
        give some back when it ends (``_ended``); with nothing running, try
        again after a while, and give up when nothing could start for
        GIVE_UP_AFTER seconds."""
        retry = self._shortage.failed(bool(self.attempts))
        if retry is Shortage.GIVE_UP:
            self._message("nothing could start for %gs: %s" % (GIVE_UP_AFTER,
                                                               limit_words(error)))
            self._stop(EXIT_INCOMPLETE)
        elif retry is not None and self._retry_timer is None:
            self._retry_timer = self.loop.call_later(retry, self._retry_starts)

    def _retry_starts(self):
        self._retry_timer = None
        self._eased()
        self._dispatch()

    def _eased(self):
        """Something ended (or a retry is due): what waited for resources
        may try again; of the resting slots, one at a time."""
        self._starved = False
        self.transport.resources_freed()
        while self._resting:
            slot = self._resting.popleft()
            if slot in slot.host.held:
                self.pool.admit(slot.host.name, lambda held, slot=slot: held is slot)
                return

    def _fit_slots_to_open_files_limit(self):
        """Run no more jobs at once than the open-files limit can hold
        (running more would only fail to start them)."""
        limit = open_files_limit()
        if limit is None:
            return
        per_job = self.transport.fds_per_attempt
        if self.plan.output_dir:
            per_job += 2  # the job's two partial output files
        if self.plan.group:
            per_job += 2  # outputs past SPILL_AFTER wait in temporary files
        fit = slots_that_fit(limit, open_fd_count(), per_job)
        if fit < self._slots_wanted():
            self.scheduler.max_running = fit
            self._say_slot_limit(fit, None)

    def _slots_wanted(self):
        """How many jobs the user asked to run at once (slots, or -m)."""
        wanted = len(self.plan.hosts)
        return min(wanted, self.plan.max_nodes) if self.plan.max_nodes else wanted

    def _say_slot_limit(self, fit, error):
        """Say once that fewer jobs run at once than asked, and why (``error``:
        what a start ran into; None: the open-files limit read at start)."""
        if self._limit_said or not fit:
            return  # none at all: said when the run gives up
        self._limit_said = True
        self._message("only %d of %d slots can run at once: %s"
                      % (fit, self._slots_wanted(), limit_words(error)))

    def _kill(self, attempt, reason):
        """Stop an attempt (``reason``: a Failure): the transport closes its
        stdin, and the remote wrapper then stops the job and all it started,
        and reports how it ended."""
        if attempt.stopped is None:
            attempt.stopped = reason
        self._disarm_start_deadline(attempt)
        attempt.session.stop(stop_grace(attempt.reports.started))

    def _output(self, attempt, stream, data):
        if attempt.reports.started:
            self._disarm_start_deadline(attempt)
        attempt.received += len(data)
        # Sinks report their own errors; this catches --output-dir files
        # and --group's temporary files.
        self._guarded(self._delivery_files(), attempt.out.data, stream, data)

    def _ended(self, attempt, code, failure):
        self.attempts.discard(attempt)
        self._starved = False  # its fds are free again
        if attempt.timer:
            attempt.timer.cancel()
        self._disarm_start_deadline(attempt)
        job = attempt.job
        host = attempt.slot.host.name
        undelivered = attempt.reports.undelivered
        if undelivered is not None:
            undelivered = not_delivered(undelivered, len(job.command))
        verdict = judge(failure, code, attempt.reports.started, attempt.reports.status,
                        attempt.stopped, undelivered)
        failure = verdict.failure
        if self.joblog:
            self._guarded(self.joblog.path, self.joblog.record, job.seq, host, attempt.started,
                          time.time() - attempt.started, attempt.received, verdict.exitval,
                          verdict.signal, job.text)
        self._guarded(self._delivery_files(), attempt.out.close, failure is None)
        if attempt.reports.started:
            self._first_failures.job_started()
        blameless = failure and self._first_failures.no_node_can_cure(host, failure)
        for name in blameless or ():
            # Retired for words that turned out to be this machine's fault.
            self.pool.reinstate(name)
        cannot_cure = failure and (failure.kind.stops_run or blameless)
        if cannot_cure and not self._stopping:
            # Every node would fail the same way (Slurm's step limit, say):
            # stop instead of retiring them one by one.
            self._message("%s: %s: no node can run jobs, stopping" % (host, failure.detail))
            # Unlike Ctrl-C, nobody asked for this stop: say what is left.
            self._report_when_stopped = True
            self._stop(EXIT_INCOMPLETE)
        if self._stopping:
            if failure:
                job.failures.append((attempt.slot.host.name, failure))
            self.pool.release(attempt.slot)
            self.feed.requeue(job)
            self._maybe_finish_stop()
            return
        outcome = self.scheduler.attempt_finished(job, attempt.slot, failure)
        if failure is None or outcome.gave_up:
            self._guarded(self._index_path(), self.delivery.record, job.seq, failure, host,
                          job.text)
        self._apply(self.health.attempt_ended(attempt.slot.host, failure))
        if failure and self.plan.verbose:
            then = ("requeued" if outcome.requeued else "given up")
            self._message("job %d on %s: %s; %s" % (job.seq, host, failure, then))
        self._dispatch()
        if ((self._resting or self.transport.waiting_for_resources) and not self._starved
                and not self._stopping):
            # The slot this job freed went first; now one that rests.
            self._eased()
            self._dispatch()

    def _delivery_files(self):
        """Where job output goes besides the sinks, for error messages."""
        return self.plan.output_dir_path or "a temporary file in %s" % tempfile.gettempdir()

    def _index_path(self):
        return self.plan.output_dir_path and os.path.join(self.plan.output_dir_path, "index.tsv")

    # -- ending -------------------------------------------------------------

    def _finish(self):
        incomplete = self._incomplete()
        ok = not incomplete and self.feed.input_done
        self._stopping = True  # nothing new starts now
        self.exit_status = EXIT_OK if ok else EXIT_INCOMPLETE
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
        """The failure report: always when jobs did not complete; with -v also
        when nodes were retired on the way (node filtering does that by
        design, so it is not news by itself)."""
        retired = self.pool.retired_hosts()
        if not incomplete and self.feed.input_done and not (retired and self.plan.verbose):
            return
        lines = failure_report(retired, incomplete, limit=None if self.plan.verbose > 1 else 20,
                               never_started=self._why_never_started)
        if incomplete or not self.feed.input_done:
            unread = "" if self.feed.input_done else " (job input not read to its end)"
            lines.append("%d of %d jobs were not completed%s" % (
                len(incomplete), self.feed.total - self.feed.skipped, unread))
        for line in lines:
            self._message(line)

    def _why_never_started(self, job):
        """The report's words for a job that ended the run without an
        attempt."""
        if job.host is not None and self.pool.hosts[job.host].retired:
            return "never started: %s was retired" % job.host
        if self.pool.usable:
            return "never started"
        # Slots that are neither retired nor usable were used up.
        used_up = any(not host.retired for host in self.pool.hosts.values())
        if used_up and self.plan.max_node_uses:
            uses = "--max-node-uses %d" % self.plan.max_node_uses
            if self.pool.retired_hosts():
                return "never started: no node left (retired, or every slot used up: %s)" % uses
            return "never started: every slot used up (%s)" % uses
        return "never started: no node left"

    def _interrupted(self, signum):
        if self._stopping:
            # A second signal, or one while the last output is written: leave
            # now, without what the reader has not taken.
            self.exit_status = SIGNAL_EXITS[signum]
            self._leaving = True
            self.loop.stop()
            return
        self._stop(SIGNAL_EXITS[signum])

    def _broken_pipe(self):
        self._stop(EXIT_BROKEN_PIPE)

    def _local_io_failed(self, error):
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

    def _stop(self, status):
        """Stop every running attempt, then end the run with ``status``."""
        if self._stopping:
            return
        self._stopping = True
        self.exit_status = status
        for attempt in list(self.attempts):
            self._kill(attempt, stopped_by_clstr())
        self._maybe_finish_stop()

    def _maybe_finish_stop(self):
        if not self.attempts:
            if self._report_when_stopped:
                self._report(self._incomplete())
            self.loop.stop()

    def _shut_down(self):
        for attempt in list(self.attempts):
            attempt.session.kill()
        self.transport.shutdown()
        self.private.remove()
        self.feed.close()
        if self.active_nodes:
            self.attempts.clear()
            self.active_nodes.write()
        self._guarded(self._index_path(), self.delivery.close)
        if self.joblog:
            self._guarded(self.joblog.path, self.joblog.close)
        # Last, so that what the files above had to say is written too.
        self._write_out()
        if self.status:
            self.status.finish()
            if self.status.fd != 2:
                os.close(self.status.fd)
        for sink in set(self.sinks.values()):
            sink.close()
        self.loop.close()

    def _write_out(self):
        """Let the loop write what the sinks still hold, as slowly as their
        readers take it.  Signals are still handled meanwhile: one drops the
        rest and leaves (a stalled reader never makes clstr unkillable)."""
        sinks = set(self.sinks.values())
        if not self._leaving:
            self.loop.run_while(lambda: not self._leaving
                                and any(sink.pending for sink in sinks))

    # -- watching -----------------------------------------------------------

    def _pressure(self, pressed):
        """A sink is backed up: stop reading children until it drains."""
        self._paused = pressed
        for attempt in self.attempts:
            if pressed:
                attempt.session.pause()
                self._disarm_start_deadline(attempt)
            else:
                attempt.session.resume()
                self._arm_start_deadline(attempt)

    def _changed(self):
        if self.status:
            self.status.changed()
        if self.active_nodes:
            self.active_nodes.changed()

    def _status_fields(self):
        expected, known = self.feed.expected_total
        return progress_fields(self.scheduler.completed, expected - self.feed.skipped,
                               self.pool.busy, self.pool.live_slots, known,
                               time.monotonic() - self._started, len(self.pool.retired_hosts()))

    def _summary_fields(self):
        return summary_fields(self.scheduler.completed, self.feed.total - self.feed.skipped,
                              time.monotonic() - self._started, len(self.pool.retired_hosts()))

    def _active_entries(self):
        running = sorted(self.attempts, key=lambda a: a.job.seq)
        return [(a.slot.host.name, a.job.brief) for a in running]

    def _message(self, text):
        """One line from clstr itself, on stderr, in order with job output."""
        self.sinks[0].write(self, ("clstr: %s\n" % text).encode("utf-8", "backslashreplace"))
