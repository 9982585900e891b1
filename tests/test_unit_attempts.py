"""attempts.py without a network: what clstr's own stop means for an attempt
whose job has (not) reported its end.  The transport, delivery and run are
stand-ins; the loop and the end reports are real."""

from clstr.attempts import Attempts, AttemptsOwner
from clstr.failures import Kind
from clstr.jobs import Job
from clstr.loop import EventLoop
from clstr.nodes import NodePool
from clstr.plan import Plan
from clstr.transport.endreport import RUN_TOKEN, ReportReader
from clstr.transport.interface import NoSession
from clstr.transport.sshcommand import SshSettings


class StoppableSession(NoSession):
    """Records each stop it is asked for."""

    def __init__(self):
        self.stops = []

    def stop(self, grace):
        self.stops.append(grace)


class OneSessionTransport:
    fds_per_attempt = 3

    def __init__(self):
        self.session = StoppableSession()

    def report_reader(self):
        return ReportReader()

    def open(self, attempt, handler):
        return self.session


class KeptOutput:
    def data(self, stream, data):
        pass

    def close(self, completed):
        self.completed = completed


class Delivery:
    def open(self, seq, host):
        return KeptOutput()

    def keeps(self, failure):
        return failure is None


class Owner(AttemptsOwner):
    def __init__(self):
        self.verdicts = []

    def attempt_ended(self, attempt, verdict):
        self.verdicts.append(verdict)

    def guarded(self, what, write, *args):
        write(*args)
        return True


def started_attempt():
    loop = EventLoop()
    transport, owner = OneSessionTransport(), Owner()
    attempts = Attempts(loop, Plan(hosts=("h",), ssh=SshSettings()), transport, Delivery(),
                        None, owner)
    slot = NodePool(["h"]).acquire()
    assert attempts.start(Job(1, b"true"), slot)
    (attempt,) = list(attempts)
    attempt.reports.feed(b"\x1eclstr-%s:s\n" % RUN_TOKEN.encode())
    return loop, attempts, attempt, transport, owner


def test_job_that_reported_its_end_before_clstrs_stop_completed():
    # Ctrl-C between the job's end report and its transport's exit: the
    # job had completed (its output is out), so --resume must skip it.
    loop, attempts, attempt, transport, owner = started_attempt()
    attempt.reports.feed(b"\x1eclstr-%s:e0\n" % RUN_TOKEN.encode())
    attempts.stop_all()
    assert transport.session.stops  # still told to end
    attempt.ended(0, None)
    (verdict,) = owner.verdicts
    assert (verdict.failure, verdict.exitval, verdict.signal) == (None, 0, 0)
    loop.close()


def test_job_stopped_before_its_end_report_is_clstrs_stop():
    loop, attempts, attempt, transport, owner = started_attempt()
    attempts.stop_all()
    attempt.reports.feed(b"\x1eclstr-%s:e143\n" % RUN_TOKEN.encode())
    attempt.ended(0, None)
    (verdict,) = owner.verdicts
    assert verdict.failure.kind is Kind.INTERRUPTED
    assert (verdict.exitval, verdict.signal) == (143, 15)
    loop.close()
