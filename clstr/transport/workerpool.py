"""``--workers``: a worker per slot (transport/worker.py), each job an attempt
riding on its slot's worker.

A slot's worker is started through the run's transport (one srun step per
slot under ``--slurm``, one ``--exec`` process per slot, over ssh one session
per slot through the host's master, or one ssh login per slot without
masters) when the slot first gets a job, and kept until the run ends.  The
masters are the base transport's, started and judged as for per-job
attempts: this transport passes their calls on.
A job's attempt is a frame sent to it; the attempt's output is what the
worker writes between the job's start and end reports, on each stream, and
its verdict comes from the same reports as in per-job mode
(failures.judge).  Since a slot runs one job at
a time and its attempt ends only at both end reports, clstr sends the next
frame only after them.

A worker that dies or is lost ends its running job as that transport's
process would have ended (its ``classify_end``, or ssh's log: started
without an end report is a lost connection, requeued); the slot's next job
starts a new worker.
A job is stopped as a per-job session's is: its worker's stdin is closed
(the worker stops the job and reports its end), and its process signalled
if it has not ended within the stop's grace; that worker then ends.
"""

import itertools

from .endreport import RUN_TOKEN, ReportReader
from .interface import AttemptHandler, Session, Transport
from .prelude import slot_prelude
from .worker import ACK_FRAME, NO_GROUP, READY_TOKEN, job_frame, setup_frame
from .wrapper import command_on_stdin


class WorkerTransport(Transport):
    """Attempts through a worker per slot, started through ``base`` (an
    ExecTransport, SshTransport or MuxTransport: its ``worker_process`` and
    ``describe_worker``, and its masters) under ``loop``, for ``plan``'s
    jobs (its --env and --workdir go in each worker's slot prelude)."""

    def __init__(self, base, loop, plan):
        self._base = base
        self._loop = loop
        self._plan = plan
        self._workers = {}  # slot -> its Worker
        # Hosts whose worker could not give a job a group of its own: their
        # jobs go one session each, through the base transport.
        self._per_job_hosts = set()
        self._attempt_numbers = itertools.count(1)
        self.has_masters = base.has_masters
        self.fds_per_attempt = base.fds_per_attempt

    @property
    def waiting_for_resources(self):
        return self._base.waiting_for_resources

    def prepare(self, slots_in_demand):
        self._base.prepare(slots_in_demand)

    def master_of(self, slot):
        return self._base.master_of(slot)

    def start_master(self, host, group):
        self._base.start_master(host, group)

    def resources_freed(self):
        self._base.resources_freed()

    def report_reader(self):
        # Each attempt's reports carry a token of their own, and what the
        # worker's transport says outside a job is not the job's.
        token = "%s-%d" % (RUN_TOKEN, next(self._attempt_numbers))  # see Worker.run
        return ReportReader(token, before_start="drop", after_end="drop")

    def open(self, attempt, handler):
        slot = attempt.slot
        if command_on_stdin(attempt.command) or slot.host.name in self._per_job_hosts:
            # A command too big for a frame's line goes on its own session's
            # stdin, as without --workers.
            return self._base.open(attempt, handler)
        worker = self._workers.get(slot)
        if worker is None:
            worker = Worker(self._loop, self._base, slot, slot_prelude(self._plan, slot),
                            lambda gone: self._gone(slot, gone), self._per_job)
            self._workers[slot] = worker
        return worker.run(attempt, handler)

    def _per_job(self, attempt, handler):
        """``attempt``'s worker cannot give it a group of its own: it, and
        every later job on its host, runs in a session of its own."""
        self._per_job_hosts.add(attempt.slot.host.name)
        return self._base.open(attempt, handler)

    def _gone(self, slot, worker):
        if self._workers.get(slot) is worker:
            del self._workers[slot]

    def describe(self, job, slot, prelude):
        """The worker's argv on ``slot`` (each job, with its prelude, is a
        frame on its stdin)."""
        return self._base.describe_worker(slot)

    def remote_process(self, slot, handler, words, reports, stdin_data=None):
        # A program of clstr's own is no job: it runs beside the worker.
        return self._base.remote_process(slot, handler, words, reports, stdin_data)

    def describe_remote(self, slot, words):
        return self._base.describe_remote(slot, words)

    def shutdown(self):
        # EOF: an idle worker exits, a running job is stopped.
        for worker in list(self._workers.values()):
            worker.close()
        self._workers.clear()
        self._base.shutdown()


class Worker(AttemptHandler):
    """One worker on ``slot``, started by ``base.worker_process`` under
    ``loop``, carrying one job at a time (``run``), each after ``prelude``
    (bytes, prelude.slot_prelude's).  Its process's end is
    named for the job it carried (``classify``); ``gone(worker)`` is told
    that it has ended."""

    # One a slot for the whole run.
    __slots__ = ("loop", "_base", "_gone", "_per_job", "_no_group", "job", "_until_ready",
                 "process")

    def __init__(self, loop, base, slot, prelude, gone, per_job):
        self.loop = loop
        self._base = base
        self._gone = gone
        self._per_job = per_job
        self._no_group = False
        self.job = None  # the running WorkerSession
        # Each stream until the worker's ready report (then None).
        self._until_ready = {1: ReportReader(READY_TOKEN, before_start="drop"),
                             2: ReportReader(READY_TOKEN, before_start="drop")}
        self.process = base.worker_process(slot, self, self._classify)
        self.process.send(setup_frame(RUN_TOKEN, prelude))

    def _ready_streams(self):
        return [stream for stream, reader in self._until_ready.items() if reader is None]

    def run(self, attempt, handler):
        """Send ``attempt``'s job; returns its Session."""
        assert self.job is None, "a worker runs one job at a time"
        self.job = WorkerSession(self, attempt, handler)
        self.job.started(self._ready_streams())
        # Reading may have been paused under the previous job.
        self.process.resume()
        # The frame carries the number at the end of the attempt's token
        # (WorkerTransport.report_reader's); the worker has the rest.
        number = int(attempt.reports.token.rpartition("-")[2])
        self.process.send(job_frame(number, attempt.job.seq, attempt.command))
        return self.job

    def close(self):
        self.process.stop(0)

    def stop_job(self, grace):
        """Stop its job: EOF on its frames (the worker stops the job's
        group, reports its end and exits), and the process stopped as a
        per-job one is (signals ``grace`` later, if it has not ended).
        Out of the pool at once: a job sent to it would never run."""
        self._gone(self)
        self.process.stop(grace)

    # -- what the worker's process says (it is its AttemptHandler) ------------

    def output(self, stream, data):
        """Each chunk of the worker's output is answered (ACK_FRAME), but
        the one that ends its job: the next frame answers that one.  The
        ready reports too: a second job waited 44 ms for the ACK of the
        first's through srun."""
        reader = self._until_ready[stream]
        if reader is not None:
            data = reader.feed(data)
            if reader.started:
                self._until_ready[stream] = None
                if self.job is not None:
                    self.job.started([stream])
            else:
                self._no_group = NO_GROUP in reader.said_before_start
                data = b""
        if self.job is not None and data and self.job.output(stream, data):
            return
        self.process.send(ACK_FRAME)

    def _classify(self, code, stderr_tail, done):
        """As a ProcessSession's ``classify_end``: the transport's
        ``classify_end`` for the running job (no job: nothing failed)."""
        if self.job is None:
            done(None)
        else:
            self._base.classify_end(self.job.reports, code, stderr_tail, done)

    def ended(self, code, failure):
        self._gone(self)
        job, self.job = self.job, None
        if job is None:
            return
        if self._no_group:
            job.per_job(self._per_job)
        else:
            job.lost(code, failure)

    def unstarted(self, error):
        """The worker never started (its master had gone, or no fd or
        process was left for it): so did its job, which waits as an
        attempt would (``AttemptHandler.unstarted``)."""
        self._gone(self)
        job, self.job = self.job, None
        if job is not None:
            job.unstarted(error)


class WorkerSession(Session):
    """One job on a worker, reporting to ``handler``; ``reports`` (the
    attempt's ReportReader) reads its stderr, a reader of the same token its
    stdout.  It ends at both end reports, or with its worker."""

    __slots__ = ("_worker", "_attempt", "_handler", "reports", "_readers", "_over", "_inner")

    def __init__(self, worker, attempt, handler):
        self._worker = worker
        self._attempt = attempt
        self._handler = handler
        self.reports = reports = attempt.reports
        self._readers = {1: ReportReader(reports.token, before_start="drop", after_end="drop"),
                         2: reports}
        self._over = False
        self._inner = None  # the session of its own it went on in (per_job)

    def per_job(self, open_session):
        """The worker could not run it (NO_GROUP): it goes on in a session
        of its own, ``open_session(attempt, handler)``'s."""
        try:
            self._inner = open_session(self._attempt, self._handler)
        except OSError as error:
            self.unstarted(error)

    def started(self, streams):
        """The worker said on ``streams`` that it is ready: there, what
        follows is the job's (it runs the frame as it comes)."""
        for stream in streams:
            self._readers[stream].start()

    def output(self, stream, data):
        """Pass on the job's part of ``data``; True once the job has ended
        (both end reports read)."""
        data = self._readers[stream].feed(data)
        if data:
            self._handler.output(stream, data)
        if self._readers[1].ended and self._readers[2].ended:
            self._worker.job = None
            self._end(None, None)
            return True
        return False

    def unstarted(self, error):
        self._over = True
        self._handler.unstarted(error)

    def lost(self, code, failure):
        """The worker ended under this job."""
        for stream, reader in self._readers.items():
            rest = reader.close()
            if rest:
                self._handler.output(stream, rest)
        self._end(code, failure)

    def _end(self, code, failure):
        self._over = True
        self._handler.ended(code, failure)

    def stop(self, grace):
        """Stop the job: its worker's stop_job."""
        if self._inner is not None:
            self._inner.stop(grace)
            return
        # stop_job again is nothing: its worker left the pool and its
        # process's stop holds the first grace.
        if not self._over:
            self._worker.stop_job(grace)

    def kill(self):
        (self._inner or self._worker.process).kill()

    def pause(self):
        (self._inner or self._worker.process).pause()

    def resume(self):
        (self._inner or self._worker.process).resume()
