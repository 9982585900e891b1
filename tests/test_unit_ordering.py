"""Pure tier: -k/--keep-order (clstr/output/ordering.py) driven by synthetic
attempts through Delivery, into real Sinks on regular files (written at
once, no loop), without processes."""

import functools
import os
import tempfile
import tracemalloc

import pytest

from clstr.output import ordering, sinks
from clstr.output.delivery import Delivery
from clstr.output.sinks import Sink


class Outputs:
    """A -k Delivery over two real sinks (stdout, stderr) on temporary
    files, or one for both (``shared``), and what they received."""

    def __init__(self, group=False, tag=False, shared=False):
        self._files = [tempfile.TemporaryFile() for _ in range(1 if shared else 2)]
        out = Sink(None, self._files[0].fileno(), name="stdout")
        err = out if shared else Sink(None, self._files[1].fileno(), name="stderr")
        self.delivery = Delivery({0: err, 1: out, 2: err}, tag=tag, group=group,
                                 keep_order=True)

    def attempt(self, seq, *writes, host="h", ok=True):
        """One attempt of job ``seq`` writing (stream, bytes) in order, then
        closing; returns nothing: use ``start`` for one left running."""
        out = self.start(seq, *writes, host=host)
        out.close(ok)

    def start(self, seq, *writes, host="h"):
        out = self.delivery.open(seq, host)
        for stream, data in writes:
            out.data(stream, data)
        return out

    def finished(self, seq, ok=True):
        self.delivery.record(seq, None if ok else object(), "h", "job %d" % seq)

    def job(self, seq, *writes):
        """A job that completes in one attempt."""
        self.attempt(seq, *writes)
        self.finished(seq)

    def read(self, index=0):
        handle = self._files[index]
        return os.pread(handle.fileno(), 1 << 24, 0)

    @property
    def stdout(self):
        return self.read(0)

    @property
    def stderr(self):
        return self.read(1)


def test_jobs_finishing_in_reverse_come_out_in_job_order():
    outputs = Outputs()
    running = {seq: outputs.start(seq) for seq in range(1, 6)}
    for seq in (5, 4, 3, 2, 1):
        running[seq].data(1, b"job %d\n" % seq)
        running[seq].close(True)
        outputs.finished(seq)
        if seq > 1:
            assert outputs.stdout == b""
    assert outputs.stdout == b"".join(b"job %d\n" % seq for seq in range(1, 6))


def test_the_first_unfinished_job_streams_its_lines_as_they_come():
    outputs = Outputs()
    first = outputs.start(1, (1, b"one a\n"))
    second = outputs.start(2, (1, b"two a\n"))
    assert outputs.stdout == b"one a\n"
    first.data(1, b"one b\n")
    second.data(1, b"two b\n")
    assert outputs.stdout == b"one a\none b\n"
    first.close(True)
    outputs.finished(1)
    # Job 2's turn: what it held, then its lines as they come.
    assert outputs.stdout == b"one a\none b\ntwo a\ntwo b\n"
    second.data(1, b"two c\n")
    assert outputs.stdout.endswith(b"two b\ntwo c\n")


def test_stdout_and_stderr_are_each_in_job_order():
    outputs = Outputs()
    for seq in (1, 2, 3):
        outputs.start(seq)
    outputs.job(3, (2, b"err 3\n"), (1, b"out 3\n"))
    outputs.job(2, (1, b"out 2\n"), (2, b"err 2\n"))
    outputs.job(1, (2, b"err 1\n"))
    assert outputs.stdout == b"out 2\nout 3\n"
    assert outputs.stderr == b"err 1\nerr 2\nerr 3\n"


def test_one_file_for_both_streams_keeps_each_jobs_own_interleaving():
    outputs = Outputs(shared=True)
    outputs.start(1)
    outputs.job(2, (1, b"out 2\n"), (2, b"err 2\n"), (1, b"out 2 again\n"))
    outputs.job(1, (2, b"err 1\n"))
    assert outputs.stdout == b"err 1\nout 2\nerr 2\nout 2 again\n"


def test_a_requeued_jobs_failed_attempt_keeps_its_lines_ahead_of_the_next_attempt():
    # Line mode passes on what a failed attempt wrote (as without -k): it
    # stays in the job's place, before the rerun's.
    outputs = Outputs()
    outputs.start(1)
    outputs.attempt(2, (1, b"two, first try\n"), ok=False)
    outputs.job(3, (1, b"three\n"))
    outputs.job(1, (1, b"one\n"))
    assert outputs.stdout == b"one\ntwo, first try\n"
    outputs.job(2, (1, b"two, second try\n"))
    assert outputs.stdout == b"one\ntwo, first try\ntwo, second try\nthree\n"


def test_group_drops_a_failed_attempt_and_keeps_whole_jobs_in_order():
    outputs = Outputs(group=True, tag=True)
    outputs.start(1)
    outputs.attempt(2, (1, b"lost\n"), host="bad", ok=False)
    outputs.job(3, (1, b"three\n"), (2, b"three err\n"))
    outputs.attempt(2, (1, b"two\n"), host="good")
    outputs.finished(2)
    assert outputs.stdout == b""
    running = outputs.start(1, (1, b"one\n"))
    # --group: even the job with the turn shows nothing until it completes.
    assert outputs.stdout == b""
    running.close(True)
    outputs.finished(1)
    assert outputs.stdout == b"h: one\ngood: two\nh: three\n"
    assert outputs.stderr == b"h: three err\n"


def test_a_job_given_up_passes_the_turn_on():
    outputs = Outputs()
    outputs.start(1)
    outputs.job(2, (1, b"two\n"))
    outputs.attempt(1, (1, b"one failed\n"), ok=False)
    outputs.finished(1, ok=False)
    assert outputs.stdout == b"one failed\ntwo\n"


def test_numbers_that_never_open_hold_nothing_up():
    # --resume skipped job 2, or its line could not run: jobs are handed out
    # in order, so once 3 has opened, 2 never will.
    outputs = Outputs()
    outputs.start(1)
    outputs.job(3, (1, b"three\n"))
    outputs.job(1, (1, b"one\n"))
    assert outputs.stdout == b"one\nthree\n"
    # Nothing is owed now: the next job to open has the turn at once.
    outputs.start(7, (1, b"seven\n"))
    assert outputs.stdout == b"one\nthree\nseven\n"


def test_at_the_end_everything_held_goes_out_in_order_finished_or_not():
    outputs = Outputs()
    outputs.start(1, (1, b"one, cut short\n"))
    outputs.job(3, (1, b"three\n"))
    outputs.start(2, (1, b"two, still running\n"))
    outputs.delivery.finish()
    assert outputs.stdout == b"one, cut short\ntwo, still running\nthree\n"


def test_an_unterminated_line_is_parted_from_the_next_jobs_as_without_k():
    outputs = Outputs()
    outputs.start(1)
    outputs.job(2, (1, b"two\n"))
    outputs.job(1, (1, b"no newline"))
    assert outputs.stdout == b"no newline\ntwo\n"


def test_a_job_opened_behind_the_turn_waits_for_it_and_loses_nothing():
    # Never happens (fresh jobs are handed out in order), but if it did, the
    # late job would take the next turn, not stall the order.
    outputs = Outputs()
    first = outputs.start(3, (1, b"three\n"))
    late = outputs.start(2, (1, b"two\n"))
    outputs.job(4, (1, b"four\n"))
    first.close(True)
    outputs.finished(3)
    late.close(True)
    outputs.finished(2)
    assert outputs.stdout == b"three\ntwo\nfour\n"


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_finished_jobs_waiting_hold_no_file_and_little_memory_each(monkeypatch):
    # 300 jobs of 20000 bytes each wait behind job 1: their 6 MB go onto
    # tapes of 1 MiB (monkeypatched down from 64 MiB), each on disk past its
    # first SPILL_AFTER bytes, with one open file per tape, not per job.
    monkeypatch.setattr(sinks, "SPILL_AFTER", 64 * 1024)
    monkeypatch.setattr(ordering, "TAPE_BYTES", 1024 * 1024)

    def output(seq):
        return (b"%04d\n" % seq) * 4000

    outputs = Outputs()
    outputs.start(1)
    before = open_fds()
    tracemalloc.start()
    try:
        for seq in range(2, 302):
            outputs.job(seq, (1, output(seq)))
        held_in_memory = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held_in_memory < 1024 * 1024
    tapes = {id(turn.held[0][2]._tape) for turn in outputs.delivery._ordering._turns.values()
             if turn.held}
    assert len(tapes) == 6  # 53 jobs' 20000 bytes pass 1 MiB
    assert open_fds() - before <= len(tapes)
    outputs.job(1, (1, b"one\n"))
    assert outputs.stdout == b"one\n" + b"".join(output(seq) for seq in range(2, 302))
    # Every piece has been read: every tape is closed, its file gone.
    assert open_fds() <= before


def test_a_finished_job_waiting_costs_a_few_hundred_bytes():
    # About 520 bytes here: its place, its pieces' records, nothing of the
    # attempt that wrote them (its delivery mode and line assemblers).
    outputs = Outputs()
    outputs.start(1)
    tracemalloc.start()
    try:
        for seq in range(2, 2002):
            outputs.job(seq, (1, b"job %d\n" % seq), (2, b"job %d\n" % seq))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held / 2000 < 1000


def test_a_running_jobs_output_past_spill_after_waits_on_disk(monkeypatch):
    monkeypatch.setattr(sinks, "SPILL_AFTER", 64 * 1024)
    outputs = Outputs()
    outputs.start(1)
    before = open_fds()
    running = outputs.start(2)
    chunk = b"x" * 1000 + b"\n"
    for _ in range(200):
        running.data(1, chunk)
    turn = outputs.delivery._ordering._turns[2]
    (_, buffer), = turn.open.values()
    assert buffer._file is not None and buffer._memory is None
    assert open_fds() == before + 1
    running.close(True)
    outputs.finished(2)
    outputs.job(1, (1, b"one\n"))
    assert outputs.stdout == b"one\n" + chunk * 200
    assert open_fds() <= before


@pytest.mark.parametrize("size", [10, 70 * 1024], ids=["in memory", "on disk"])
def test_a_tape_reads_back_each_piece_by_place(monkeypatch, size):
    monkeypatch.setattr(sinks, "SPILL_AFTER", 64 * 1024)
    shelf = ordering._Shelf()
    pieces = []
    for index in range(5):
        buffer = sinks.SpillBuffer()
        buffer.append(bytes([65 + index]) * size)
        pieces.append(shelf.put(buffer))
    for index, piece in reversed(list(enumerate(pieces))):
        reader = piece.reader()
        assert b"".join(iter(functools.partial(reader.read, 4096), b"")) == (
            bytes([65 + index]) * size)
        reader.close()
