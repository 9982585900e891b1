"""Pure tier: cutting job streams into lines (clstr/output/lines.py) and tagging
them (clstr/output/delivery.py), without processes."""

import functools
import random
import tracemalloc

import pytest

from clstr.output import lines as lines_module
from clstr.output.delivery import Delivery, tag_lines
from clstr.output.lines import LineAssembler
from clstr.output.sinks import SpillBuffer

READ = 65536  # what a child's pipe gives per read



def in_memory(assembler):
    """Bytes of the partial line the assembler holds in memory."""
    return sum(map(len, assembler._chunks))

def contents(piece):
    """The bytes of a piece from a LineAssembler (bytes or a SpillBuffer)."""
    if not isinstance(piece, SpillBuffer):
        return piece
    reader = piece.reader()
    data = b"".join(iter(lambda: reader.read(READ), b""))
    reader.close()
    return data


def feed_all(assembler, chunks):
    pieces = []
    for chunk in chunks:
        pieces += [contents(piece) for piece in assembler.feed(chunk)]
    return pieces + [contents(piece) for piece in assembler.finish()]


def test_a_200_mb_line_without_newline_is_held_in_bounded_memory():
    assembler = LineAssembler()
    chunk = b"x" * READ
    total = 200 * 1000 * 1000
    pieces = []
    tracemalloc.start()
    try:
        for _ in range(total // READ):
            pieces += assembler.feed(chunk)
            # Checked as it goes: an assembler that holds the line in memory
            # fails here after a few MiB instead of swapping.
            assert tracemalloc.get_traced_memory()[1] < 8 * 1024 * 1024
        pieces += assembler.feed(chunk[:total % READ])
        pieces += assembler.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
    # Pieces of MAX_LINE, each on disk until read, then the rest.
    assert all(isinstance(piece, SpillBuffer) for piece in pieces)
    assert [piece.size for piece in pieces] == [lines_module.MAX_LINE] * 2 + [
        total - 2 * lines_module.MAX_LINE]
    for piece in pieces:
        reader = piece.reader()
        for block in iter(functools.partial(reader.read, 1 << 20), b""):
            assert block == b"x" * len(block)
        reader.close()


def test_every_byte_of_a_long_line_is_stored_once_and_memory_stays_under_the_spill_mark(
        monkeypatch):
    stored = []

    class CountingSpillBuffer(SpillBuffer):
        def append(self, data):
            stored.append(len(data))
            super().append(data)

    monkeypatch.setattr(lines_module, "SpillBuffer", CountingSpillBuffer)
    assembler = LineAssembler()
    fed = 0
    for _ in range(500):  # about 32 MB
        assembler.feed(b"y" * READ)
        fed += READ
        assert in_memory(assembler) <= lines_module.SPILL_AFTER
    (line,) = assembler.feed(b"\n")
    assert isinstance(line, CountingSpillBuffer)
    # Linear: each byte was copied to the spill file once, never re-copied
    # as the line grew.
    assert sum(stored) == fed + 1 == line.size
    line.close()


def test_a_short_partial_line_stays_in_memory_and_leaves_in_one_piece():
    assembler = LineAssembler()
    assert assembler.feed(b"ab") == []
    assert assembler.feed(b"cd") == []
    assert in_memory(assembler) == 4
    assert assembler.feed(b"e\nf\ng") == [b"abcde\nf\n"]


def test_a_carriage_return_ends_a_line():
    assembler = LineAssembler()
    assert assembler.feed(b"10%\r20%\r30%") == [b"10%\r20%\r"]
    assert assembler.feed(b"\r40%") == [b"30%\r"]
    assert assembler.finish() == [b"40%"]


def test_a_progress_bar_without_newline_never_grows_one_line():
    assembler = LineAssembler()
    for step in range(20000):
        assembler.feed(b"\rprogress %6d" % step)
        assert in_memory(assembler) <= 20


def test_a_carriage_return_ending_a_read_waits_for_the_next_byte():
    assembler = LineAssembler()
    assert assembler.feed(b"one\r") == []
    assert assembler.feed(b"\ntwo\r") == [b"one\r\n"]
    assert assembler.feed(b"three") == [b"two\r"]
    assert assembler.feed(b"\r") == []
    assert assembler.finish() == [b"three\r"]


def test_cr_lf_is_never_cut_in_two_however_the_reads_fall():
    rng = random.Random(7)
    text = bytes(rng.choice(b"ab\r\n") for _ in range(20000))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), 2000))
        chunks = [text[start:end] for start, end in zip([0] + cuts, cuts + [len(text)])]
        pieces = feed_all(LineAssembler(), chunks)
        assert b"".join(pieces) == text
        for before, after in zip(pieces, pieces[1:]):
            assert before.endswith((b"\n", b"\r"))
            assert not (before.endswith(b"\r") and after.startswith(b"\n"))


def test_cr_lf_ending_a_spilled_line_across_reads_stays_together(monkeypatch):
    monkeypatch.setattr(lines_module, "SPILL_AFTER", 100)
    assembler = LineAssembler()
    assert assembler.feed(b"z" * 300 + b"\r") == []
    (line, rest) = assembler.feed(b"\nnext\n")
    assert isinstance(line, SpillBuffer)
    assert contents(line) == b"z" * 300 + b"\r\n"
    assert rest == b"next\n"


def test_a_line_longer_than_the_cap_goes_out_in_pieces_of_the_cap(monkeypatch):
    monkeypatch.setattr(lines_module, "MAX_LINE", 1000)
    monkeypatch.setattr(lines_module, "SPILL_AFTER", 300)
    line = bytes(random.Random(1).choice(b"abcdef") for _ in range(2600)) + b"\n"
    chunks = [line[start:start + 64] for start in range(0, len(line), 64)] + [b"short\n"]
    pieces = feed_all(LineAssembler(), chunks)
    assert [len(piece) for piece in pieces] == [1000, 1000, 601, 6]
    assert b"".join(pieces) == line + b"short\n"


def test_one_read_longer_than_the_cap_is_cut_too(monkeypatch):
    monkeypatch.setattr(lines_module, "MAX_LINE", 1000)
    pieces = feed_all(LineAssembler(), [b"a" * 2500 + b"\nb\n"])
    assert b"".join(pieces) == b"a" * 2500 + b"\nb\n"
    assert max(len(line) for piece in pieces for line in piece.splitlines(True)) <= 1000


def test_tags_follow_every_line_end_but_never_split_cr_lf():
    assert tag_lines(b"h: ", b"a\rb\r\nc\nd") == b"h: a\rh: b\r\nh: c\nh: d"
    assert tag_lines(b"h: ", b"a\r") == b"h: a\r"
    assert tag_lines(b"h: ", b"a\r\n") == b"h: a\r\n"
    assert tag_lines(b"h: ", b"a\nb\n") == b"h: a\nh: b\n"


class RecordingSink:
    """Stands in for output.Sink: records what is written, and how."""

    def __init__(self):
        self.calls = []

    def write(self, source, data):
        if data:
            self.calls.append(("bytes", data))

    def write_spilled(self, source, spill):
        self.calls.append(("spilled", contents(spill)))
        spill.close()

    def output(self):
        return b"".join(data for _, data in self.calls)


def run_delivery(sink, chunks, **mode):
    out = Delivery({1: sink, 2: RecordingSink()}, **mode).open(7, "node001")
    for chunk in chunks:
        out.data(1, chunk)
    out.close(True)


LONG = b"L" * (3 * 1024 * 1024)
LONG_CHUNKS = [LONG[start:start + READ] for start in range(0, len(LONG), READ)]


def test_tag_puts_the_prefix_before_a_spilled_line_which_stays_on_disk():
    sink = RecordingSink()
    run_delivery(sink, LONG_CHUNKS + [b"\nnext\nlast"], tag=True)
    assert sink.calls == [("bytes", b"node001: "), ("spilled", LONG + b"\n"),
                          ("bytes", b"node001: next\n"), ("bytes", b"node001: last")]


def test_tag_keeps_cr_lf_whole_when_it_ends_a_spilled_line_in_the_same_read():
    sink = RecordingSink()
    run_delivery(sink, LONG_CHUNKS + [b"LLL\r\nnext\n"], tag=True)
    assert sink.output() == b"node001: " + LONG + b"LLL\r\nnode001: next\n"


def test_an_unterminated_long_final_line_is_delivered_whole_at_the_end():
    sink = RecordingSink()
    run_delivery(sink, LONG_CHUNKS)
    assert sink.calls == [("spilled", LONG)]


@pytest.mark.parametrize("tag", [False, True], ids=["plain", "tag"])
def test_group_mode_holds_long_lines_and_tags_them_like_line_mode(tag):
    lines_sink, group_sink = RecordingSink(), RecordingSink()
    chunks = [b"a\r\n"] + LONG_CHUNKS + [b"\rprogress\r", b"\nend"]
    run_delivery(lines_sink, chunks, tag=tag)
    run_delivery(group_sink, chunks, tag=tag, group=True)
    prefix = b"node001: " if tag else b""
    expected = (prefix + b"a\r\n" + prefix + LONG + b"\r" + prefix + b"progress\r\n"
                + prefix + b"end")
    assert lines_sink.output() == expected
    assert group_sink.output() == expected
    assert [how for how, _ in group_sink.calls] == ["spilled"]
