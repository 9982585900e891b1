"""Pure tier: --gather's grouping (output/gathered.py, through Delivery),
fed synthetic attempts; the sinks are real, writing to files."""

import os
import tempfile

import pytest

from clstr.failures import Failure, Kind, job_exit
from clstr.loop import EventLoop
from clstr.output import gathered
from clstr.output.delivery import Delivery
from clstr.output.sinks import Sink


class Outputs:
    """A Delivery gathering into two real sinks on files (stdout, stderr)."""

    def __init__(self, directory):
        self.loop = EventLoop()
        self.paths = {1: directory / "stdout", 2: directory / "stderr"}
        self.fds = {stream: os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o600)
                    for stream, path in self.paths.items()}
        self.sinks = {stream: Sink(self.loop, fd) for stream, fd in self.fds.items()}
        self.delivery = Delivery(self.sinks, gather=True)

    def node(self, host, stdout=b"", stderr=b"", failure=None):
        """One attempt on ``host`` that wrote ``stdout`` and ``stderr`` (in
        pieces, as pipes deliver them) and ended with ``failure``."""
        out = self.delivery.open(1, host)
        for stream, data in ((1, stdout), (2, stderr)):
            for start in range(0, len(data), 1000):
                out.data(stream, data[start:start + 1000])
        out.close(self.delivery.keeps(failure))

    def printed(self):
        """What the run's end prints: (stdout, stderr) as text."""
        self.delivery.finish()
        self.delivery.close()
        for sink in self.sinks.values():
            sink.close()
        for fd in self.fds.values():
            os.close(fd)
        self.loop.close()
        return tuple(self.paths[stream].read_text() for stream in (1, 2))


@pytest.fixture
def outputs(tmp_path):
    return Outputs(tmp_path)


def block(names, *lines):
    return "---------------\n%s\n---------------\n" % names + "".join(
        line + "\n" for line in lines)


def test_each_distinct_output_is_printed_once_under_its_folded_nodes_largest_first(outputs):
    for n in (1, 2, 3, 4, 5, 6, 7, 9):
        outputs.node("lab%02d" % n, b"6.1.0-18-amd64\n")
    outputs.node("lab08", b"6.1.0-17-amd64\n")
    outputs.node("lab10", b"5.10.0-28-amd64\n")
    outputs.node("lab11", b"5.10.0-28-amd64\n")
    stdout, stderr = outputs.printed()
    assert stdout == (block("lab[01-07,09] (8)", "6.1.0-18-amd64")
                      + block("lab[10-11] (2)", "5.10.0-28-amd64")
                      + block("lab08", "6.1.0-17-amd64"))
    assert stderr == ""


def test_equal_groups_go_in_the_natural_order_of_their_first_node(outputs):
    # node9 comes before node10 as people count, though not as text sorts.
    outputs.node("node10", b"b\n")
    outputs.node("node11", b"b\n")
    outputs.node("node9", b"a\n")
    outputs.node("node12", b"a\n")
    outputs.node("gw", b"c\n")
    outputs.node("gw2", b"c\n")
    stdout, _ = outputs.printed()
    assert stdout == (block("gw,gw2 (2)", "c") + block("node[9,12] (2)", "a")
                      + block("node[10-11] (2)", "b"))


def test_stderr_is_gathered_apart_on_stderr_and_says_so(outputs):
    outputs.node("n1", b"same\n", b"warning: low disk\n")
    outputs.node("n2", b"same\n")
    outputs.node("n3", b"same\n", b"warning: low disk\n")
    stdout, stderr = outputs.printed()
    assert stdout == block("n[1-3] (3)", "same")
    assert stderr == block("n[1,3] (2) stderr", "warning: low disk")


def test_output_without_a_final_newline_gets_one_before_the_next_header(outputs):
    outputs.node("a1", b"one\ntwo")
    outputs.node("a2", b"one\ntwo")
    outputs.node("b1", b"three")
    stdout, _ = outputs.printed()
    assert stdout == block("a[1-2] (2)", "one", "two") + block("b1") + "three"


def test_a_node_that_said_nothing_is_in_no_group(outputs):
    outputs.node("quiet1")
    outputs.node("loud1", b"x\n")
    stdout, stderr = outputs.printed()
    assert stdout == block("loud1", "x")
    assert stderr == ""


def test_a_jobs_own_nonzero_exit_keeps_its_output_as_its_nodes_answer(outputs):
    outputs.node("n1", b"ok\n")
    outputs.node("n2", b"ok\n", b"cat: /x: No such file or directory\n", failure=job_exit(1))
    stdout, stderr = outputs.printed()
    assert stdout == block("n[1-2] (2)", "ok")
    assert stderr == block("n2 stderr", "cat: /x: No such file or directory")


@pytest.mark.parametrize("kind", [Kind.CONNECTION_LOST, Kind.TIMEOUT, Kind.INTERRUPTED])
def test_output_cut_short_is_dropped(outputs, kind):
    outputs.node("n1", b"whole\n")
    outputs.node("n2", b"wh", failure=Failure(kind, "cut"))
    stdout, stderr = outputs.printed()
    assert stdout == block("n1", "whole")
    assert stderr == ""


def test_only_completed_attempts_keep_output_in_the_other_modes():
    delivery = Delivery({}, group=True)
    assert delivery.keeps(None)
    assert not delivery.keeps(job_exit(1))


def _held_files(directory):
    """Sizes of this process's open files in ``directory`` (temporary files
    are unlinked, so only their fds show them)."""
    sizes = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + fd).startswith(str(directory)):
                sizes.append(os.fstat(int(fd)).st_size)
        except OSError:
            pass
    return sorted(sizes)


def test_one_copy_of_each_distinct_output_is_kept_however_many_nodes_gave_it(
        outputs, tmp_path, monkeypatch):
    spill = tmp_path / "tmp"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    big = b"".join(b"line %06d of a long output\n" % n for n in range(4000))  # 112 KB
    assert len(big) > gathered.HOLD_IN_MEMORY
    running = [outputs.delivery.open(1, "node%03d" % n) for n in range(1, 51)]
    for out in running:
        out.data(1, big)
    # Past HOLD_IN_MEMORY each running node's output waits in a file, not
    # in memory.
    assert _held_files(spill) == [len(big)] * 50
    for out in running:
        out.close(True)
    # Ended, the 50 became one copy.
    assert _held_files(spill) == [len(big)]
    stdout, _ = outputs.printed()
    assert stdout == block("node[001-050] (50)") + big.decode()
    assert _held_files(spill) == []


def test_outputs_are_told_apart_by_all_their_bytes(outputs):
    # Same length, same start, one byte apart near the end.
    first = b"x" * 50000 + b"\n"
    second = b"x" * 49999 + b"y\n"
    outputs.node("n1", first)
    outputs.node("n2", second)
    outputs.node("n3", first)
    stdout, _ = outputs.printed()
    assert stdout == block("n[1,3] (2)") + first.decode() + block("n2") + second.decode()
