"""The wrapper's start and end reports taken out of a stream (endreport.py),
and the one decision on how an attempt ended (failures.judge)."""

import subprocess

import pytest

from clstr.failures import Failure, FirstFailures, Kind, judge, not_delivered
from clstr.transport.endreport import ReportReader, report_printf

TOKEN = "0123456789abcdef"
MARK = b"\x1eclstr-" + TOKEN.encode() + b":"
START = MARK + b"s\n"


def end(status):
    return MARK + b"e%d\n" % status


def read(chunks, **options):
    reader = ReportReader(TOKEN, **options)
    out = b"".join(reader.feed(chunk) for chunk in chunks) + reader.close()
    return out, reader


def every_split(stream):
    for size in range(1, len(stream) + 1):
        yield [stream[i:i + size] for i in range(0, len(stream), size)]


def test_reports_are_taken_out_and_read():
    out, reader = read([START + b"job err\n" + end(3)])
    assert (out, reader.started, reader.status) == (b"job err\n", True, 3)


def test_reports_are_found_across_every_chunk_boundary():
    stream = b"login says\n" + START + b"err\npartial" + end(255) + b"after\n"
    for chunks in every_split(stream):
        out, reader = read(chunks)
        assert (out, reader.status) == (b"login says\nerr\npartialafter\n", 255), chunks


def test_end_report_is_found_mid_line():
    out, reader = read([START, b"no newline", end(0)])
    assert (out, reader.status) == (b"no newline", 0)


def test_another_runs_token_is_job_output():
    other = b"\x1eclstr-fedcba9876543210:e0\n"
    out, reader = read([START, other])
    assert (out, reader.status) == (other, None)


def test_an_end_before_the_start_is_not_believed():
    out, reader = read([end(0)])
    assert (out, reader.started, reader.status) == (end(0), False, None)


def test_a_mark_without_a_report_is_passed_on():
    stream = START + MARK + b"nonsense that goes on\n"
    for chunks in every_split(stream):
        out, reader = read(chunks)
        assert (out, reader.status) == (MARK + b"nonsense that goes on\n", None)


def test_a_partial_mark_at_the_end_is_given_back():
    out, reader = read([START + MARK[:5]])
    assert (out, reader.status) == (MARK[:5], None)


def test_ordinary_output_is_not_held_back():
    reader = ReportReader(TOKEN)
    reader.feed(START)
    assert reader.feed(b"progress 10%") == b"progress 10%"


def test_transport_words_before_the_start_and_after_the_end_can_be_dropped():
    stream = b"srun: queued\n" + START + b"job\n" + end(0) + b"srun: error: Node failure\n"
    out, reader = read([stream], before_start="drop", after_end="drop")
    assert (out, reader.said_before_start) == (b"job\n", b"srun: queued\n")


def test_the_shell_writes_exactly_the_reports():
    script = "%s >&2; echo job >&2; %s 7 >&2" % (report_printf(TOKEN, "s"),
                                                   report_printf(TOKEN, "e%d"))
    result = subprocess.run(["sh", "-c", script], capture_output=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.stderr == START + b"job\n" + end(7)
    assert "'" not in script


def test_an_undelivered_report_after_the_start_ends_the_attempt_in_place_of_an_end():
    stream = START + b"err\n" + MARK + b"u16777216\n" + end(0) + b"after\n"
    for chunks in every_split(stream):
        out, reader = read(chunks)
        assert (out, reader.undelivered, reader.status, reader.ended) == (
            b"err\n" + end(0) + b"after\n", 16777216, None, True), chunks


def test_an_undelivered_report_before_the_start_is_not_believed():
    out, reader = read([MARK + b"u5\n" + START + end(0)])
    assert (out, reader.undelivered, reader.status) == (MARK + b"u5\n", None, 0)


# --- judge ------------------------------------------------------------------

LOST = Failure(Kind.CONNECTION_LOST, "shared connection lost: x")
TIMEOUT = Failure(Kind.TIMEOUT, "stopped after 5s")


@pytest.mark.parametrize("code", [0, 1, 255, None, -9])
def test_the_end_report_is_the_result_whatever_the_transport_says(code):
    verdict = judge(LOST if code is None else None, code, True, 0)
    assert (verdict.failure, verdict.exitval, verdict.signal) == (None, 0, 0)
    verdict = judge(None, code, True, 255)
    assert (verdict.failure.kind, verdict.failure.status, verdict.exitval) == (
        Kind.JOB_EXIT, 255, 255)


@pytest.mark.parametrize("code", [0, 1, 255, None])
def test_started_without_an_end_report_is_a_lost_connection(code):
    verdict = judge(None if code == 0 else LOST, code, True, None)
    assert (verdict.failure.kind, verdict.exitval) == (Kind.CONNECTION_LOST, 255)


def test_srun_exit_0_without_an_end_report_is_a_lost_connection():
    verdict = judge(None, 0, True, None)
    assert verdict.failure.kind is Kind.CONNECTION_LOST


def test_a_stopped_job_keeps_clstrs_reason_and_its_reported_status():
    verdict = judge(None, 143, True, 143, stopped=TIMEOUT)
    assert (verdict.failure, verdict.exitval, verdict.signal) == (TIMEOUT, 143, 15)


def test_a_stopped_job_whose_report_never_came_is_not_a_lost_connection():
    verdict = judge(LOST, None, True, None, stopped=TIMEOUT)
    assert (verdict.failure, verdict.signal) == (TIMEOUT, 15)


def test_a_transport_killed_here_is_interrupted_not_the_nodes_fault():
    assert judge(None, -15, True, None).failure.kind is Kind.INTERRUPTED


def test_never_started_is_the_transports_failure():
    refused = Failure(Kind.REFUSED, "Connection refused")
    assert judge(refused, 255, False, None).failure is refused


def test_never_started_with_a_job_like_status_is_still_the_transports():
    failure = judge(Failure(Kind.JOB_EXIT, status=1), 1, False, None).failure
    assert failure.kind.transport and failure.kind is not Kind.JOB_EXIT


def test_fatal_stays_fatal():
    fatal = Failure(Kind.FATAL, "Slurm allocation 7 is gone")
    assert judge(fatal, 0, True, None).failure is fatal


def test_the_same_pre_start_words_from_three_nodes_clear_those_nodes():
    first = FirstFailures()
    down = Failure(Kind.TRANSPORT, "Cannot connect to the Docker daemon")
    assert not first.no_node_can_cure("a", down)
    assert not first.no_node_can_cure("a", down)
    assert not first.no_node_can_cure("b", down)
    assert first.no_node_can_cure("c", down) == {"a", "b", "c"}


def test_different_words_or_a_started_job_never_stop_the_run():
    first = FirstFailures()
    for host in "abc":
        assert not first.no_node_can_cure(host, Failure(Kind.TRANSPORT, "no container " + host))
    first = FirstFailures()
    first.job_started()
    down = Failure(Kind.TRANSPORT, "daemon down")
    assert not any(first.no_node_can_cure(host, down) for host in "abcd")


def test_a_command_the_node_could_not_store_fails_the_job_alone():
    undelivered = not_delivered(0, 2000000)
    for code, transport_failure in ((0, None), (255, LOST), (None, LOST)):
        verdict = judge(transport_failure, code, True, None, undelivered=undelivered)
        assert (verdict.failure, verdict.exitval) == (undelivered, 255)
    assert not undelivered.kind.transport
    assert str(undelivered) == "not delivered: the node stored 0 of 2000000 bytes of the command"


def test_a_job_stopped_while_its_command_came_keeps_clstrs_reason():
    verdict = judge(None, 0, True, None, stopped=TIMEOUT, undelivered=not_delivered(5, 9))
    assert (verdict.failure, verdict.signal) == (TIMEOUT, 15)
