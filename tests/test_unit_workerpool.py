"""The worker transport (transport/workerpool.py) driven by hand: a stand-in
for the worker's process says what a real worker would, in chunks cut as a
transport may cut them."""

import types

from clstr.transport.endreport import RUN_TOKEN
from clstr.transport.prelude import slot_prelude
from clstr.transport.worker import ACK_FRAME, NO_GROUP, job_frame, setup_frame
from clstr.transport.workerpool import WorkerTransport

READY = b"\x1eclstr-ready:s\n"


class StandInProcess:
    def __init__(self, handler):
        self.handler = handler
        self.sent = []

    def send(self, data):
        self.sent.append(data)

    def resume(self):
        pass

    def pause(self):
        pass

    def stop(self, grace):
        pass

    def kill(self):
        pass


class StandInBase:
    has_masters = False
    fds_per_attempt = 3
    waiting_for_resources = False

    def __init__(self):
        self.processes = []
        self.opened = []  # (attempt, handler) given a session of its own

    def open(self, attempt, handler):
        self.opened.append((attempt, handler))
        return StandInProcess(handler)

    def worker_process(self, slot, handler, classify_end):
        process = StandInProcess(handler)
        self.processes.append(process)
        return process


class Handler:
    def __init__(self):
        self.out = {1: b"", 2: b""}
        self.ends = []

    def output(self, stream, data):
        self.out[stream] += data

    def ended(self, code, failure):
        self.ends.append((code, failure))


class Slot:
    host = types.SimpleNamespace(name="h")
    index = 0


SLOT = Slot()
PLAN = types.SimpleNamespace(env=[(b"X", b"1")], workdir=None)


def start_job(transport, command=b"echo hi", slot=SLOT):
    reports = transport.report_reader()
    # Transports run the attempt's command (a template's {%} and {host}
    # filled in); the job keeps its own.
    attempt = types.SimpleNamespace(slot=slot, reports=reports, prelude=b"export X=1; ",
                                    command=command,
                                    job=types.SimpleNamespace(command=command, seq=7))
    handler = Handler()
    transport.open(attempt, handler)
    return reports, handler


def end_report(reports, status):
    return b"\x1eclstr-%s:e%d\n" % (reports.token.encode(), status)


def test_a_stream_ready_before_the_other_keeps_the_jobs_output_that_follows_it():
    base = StandInBase()
    transport = WorkerTransport(base, loop=None, plan=PLAN)
    reports, handler = start_job(transport)
    worker = base.processes[0].handler
    # stdout's ready report, the job's output and its end report in one
    # chunk, before stderr has said that it is ready.
    worker.output(1, b"motd\n" + READY + b"hi\n" + end_report(reports, 0))
    assert handler.ends == []
    worker.output(2, READY + end_report(reports, 0))
    assert handler.out == {1: b"hi\n", 2: b""}
    assert [code for code, _ in handler.ends] == [None] and reports.status == 0


def test_the_next_job_on_a_ready_worker_starts_with_its_frame():
    base = StandInBase()
    transport = WorkerTransport(base, loop=None, plan=PLAN)
    first, handler = start_job(transport)
    worker = base.processes[0].handler
    worker.output(1, READY + b"one\n" + end_report(first, 0))
    worker.output(2, READY + end_report(first, 0))
    second, handler = start_job(transport, b"echo two")
    assert len(base.processes) == 1 and second.started
    # The slot's prelude once, then each job as its attempt's number (the
    # end of its token), its own number and its command.
    assert base.processes[0].sent == [
        setup_frame(RUN_TOKEN, slot_prelude(PLAN, SLOT)),
        job_frame(int(first.token.rpartition("-")[2]), 7, b"echo hi"), ACK_FRAME,
        job_frame(int(second.token.rpartition("-")[2]), 7, b"echo two")]
    assert second.token == "%s-%d" % (RUN_TOKEN, int(first.token.rpartition("-")[2]) + 1)
    worker.output(1, b"two" + end_report(second, 3))
    worker.output(2, b"err" + end_report(second, 3))
    assert handler.out == {1: b"two", 2: b"err"} and second.status == 3


def test_every_chunk_but_a_jobs_last_is_answered_the_ready_reports_too():
    # Through srun each stream is a message of its own, and the second
    # waits (Nagle) for the first's ACK, which comes at once only with
    # data: clstr's ACK_FRAME.  The ready reports count: a second job
    # waited 44 ms for it.
    base = StandInBase()
    transport = WorkerTransport(base, loop=None, plan=PLAN)
    reports, handler = start_job(transport)
    process = base.processes[0]
    worker = process.handler
    frames = len(process.sent)
    worker.output(1, b"motd\n")
    worker.output(1, READY)
    worker.output(2, READY)
    assert process.sent[frames:] == [ACK_FRAME] * 3
    worker.output(1, b"hi\n" + end_report(reports, 0))
    assert process.sent[frames:] == [ACK_FRAME] * 4
    # The chunk that ends the job is answered by the next frame, if any.
    worker.output(2, end_report(reports, 0))
    assert process.sent[frames:] == [ACK_FRAME] * 4 and len(handler.ends) == 1


def test_a_worker_that_cannot_give_a_job_a_group_hands_its_hosts_jobs_to_sessions():
    base = StandInBase()
    transport = WorkerTransport(base, loop=None, plan=PLAN)
    reports, handler = start_job(transport)
    worker = base.processes[0].handler
    # No job control, no setsid: it says so instead of ready, and exits; the
    # words may come cut anywhere.
    worker.output(1, b"motd\n" + NO_GROUP[:9])
    worker.output(1, NO_GROUP[9:])
    worker.ended(0, None)
    assert [opened.reports for opened, _ in base.opened] == [reports]
    assert handler.ends == [] and not reports.started
    later, _ = start_job(transport, b"echo later")
    assert [opened.reports for opened, _ in base.opened] == [reports, later]
    assert len(base.processes) == 1


def test_a_command_too_big_for_a_frame_goes_in_a_session_of_its_own():
    base = StandInBase()
    transport = WorkerTransport(base, loop=None, plan=PLAN)
    big = b"echo " + b"x" * (200 * 1024)
    reports, _ = start_job(transport, big)
    assert [opened.reports for opened, _ in base.opened] == [reports]
    assert base.processes == []
