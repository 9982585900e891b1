"""Local tier: the event loop, children and sinks with real processes and
pipes on this machine (no ssh)."""

import os
import signal
import subprocess
import time

import pytest

from clstr.loop import EventLoop
from clstr.output.lines import LineAssembler
from clstr.output.sinks import HIGH_WATER, Sink, SpillBuffer
from clstr.transport.child import ChildProcess


def run_children(commands, stdin=None):
    """Run shell commands as ChildProcesses; returns [(code, stdout, stderr)]."""
    loop = EventLoop()
    devnull = os.open(os.devnull, os.O_RDONLY)
    results = {}
    outputs = {i: {1: b"", 2: b""} for i in range(len(commands))}

    def finished(i, code):
        results[i] = code
        if len(results) == len(commands):
            loop.stop()

    for i, command in enumerate(commands):
        def on_output(stream, data, i=i):
            outputs[i][stream] += data
        ChildProcess(loop, ["sh", "-c", command], devnull, on_output,
                     lambda code, i=i: finished(i, code))
    timer = loop.call_later(30, loop.stop)
    loop.run()
    timer.cancel()
    loop.close()
    os.close(devnull)
    return [(results.get(i), outputs[i][1], outputs[i][2]) for i in range(len(commands))]


def test_timers_fire_in_order_and_cancelled_ones_do_not():
    loop = EventLoop()
    fired = []
    loop.call_later(0.03, lambda: fired.append("late"))
    loop.call_later(0.01, lambda: fired.append("early"))
    loop.call_later(0.02, lambda: fired.append("cancelled")).cancel()
    loop.call_later(0.05, loop.stop)
    loop.run()
    loop.close()
    assert fired == ["early", "late"]


def test_exit_codes_and_signals_are_reported():
    results = run_children(["exit 3", "kill -TERM $$", "echo out; echo err >&2"])
    assert results == [(3, b"", b""), (-signal.SIGTERM, b"", b""), (0, b"out\n", b"err\n")]


def test_300_children_at_once_are_all_reaped():
    results = run_children(["echo %d" % n for n in range(300)])
    assert [out for _, out, _ in results] == [b"%d\n" % n for n in range(300)]


def test_a_grandchild_holding_stderr_does_not_delay_the_exit(tmp_path):
    # Models ssh's ControlPersist master, which inherits the client's stderr.
    # The grandchild outlives run_children's 30 s: an exit held until it
    # let go of stderr would come too late (no status).
    grandchild = tmp_path / "grandchild"
    results = run_children(["sleep 600 & echo $! > %s; echo done" % grandchild])
    os.kill(int(grandchild.read_text()), signal.SIGKILL)  # this run's own, no other
    assert results == [(0, b"done\n", b"")]


def test_the_loop_delivers_signals_to_its_callbacks():
    loop = EventLoop()
    seen = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: (seen.append("usr1"), loop.stop()))
    loop.call_later(0.01, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    guard = loop.call_later(5, loop.stop)
    loop.run()
    guard.cancel()
    loop.close()
    assert seen == ["usr1"]


def test_line_assembler_keeps_partial_lines_until_finished():
    lines = LineAssembler()
    assert lines.feed(b"ab") == []
    assert lines.feed(b"c\nde") == [b"abc\n"]
    assert lines.feed(b"f\ng\n") == [b"def\ng\n"]
    assert lines.feed(b"tail") == []
    assert lines.finish() == [b"tail"]
    assert lines.finish() == []


def sink_to_pipe():
    loop = EventLoop()
    read_end, write_end = os.pipe()
    events = []
    sink = Sink(loop, write_end, on_pressure=events.append,
                on_broken=lambda: events.append("broken"))
    return loop, sink, read_end, write_end, events


def drain(loop, sink, read_end, timeout=120):
    """Run the loop and read the pipe until the sink has written it all.
    Fails at the deadline rather than return early: the caller's
    sink.close() would then block on a pipe that nobody reads."""
    data = b""
    os.set_blocking(read_end, False)
    deadline = time.monotonic() + timeout
    while True:
        loop.call_later(0.001, loop.stop)
        loop.run()
        try:
            chunk = os.read(read_end, 1 << 20)
        except BlockingIOError:
            chunk = b""
        data += chunk
        if not chunk and not sink.buffered:
            return data
        assert time.monotonic() < deadline, "the sink never drained: %d bytes left" % (
            sink.buffered)


def test_lines_from_two_sources_are_never_glued():
    loop, sink, read_end, write_end, _ = sink_to_pipe()
    sink.write("a", b"unterminated")
    sink.write("a", b" still a\n")
    sink.write("a", b"a again")
    sink.write("b", b"from b\n")
    data = drain(loop, sink, read_end)
    sink.close()
    loop.close()
    assert data == b"unterminated still a\na again\nfrom b\n"


def test_a_slow_reader_applies_pressure_and_every_byte_arrives():
    loop, sink, read_end, write_end, events = sink_to_pipe()
    payload = bytes(range(256)) * 4096 + b"\n"
    for n in range(20):
        sink.write(n, payload)
    assert sink.buffered > HIGH_WATER and events == [True]
    data = drain(loop, sink, read_end)
    sink.close()
    loop.close()
    assert data == payload * 20
    assert events == [True, False]


def test_a_closed_reader_is_reported_as_broken():
    loop, sink, read_end, write_end, events = sink_to_pipe()
    os.close(read_end)
    sink.write("a", b"x\n")
    loop.call_later(0.05, loop.stop)
    loop.run()
    sink.close()
    loop.close()
    assert "broken" in events


def test_a_spilled_line_that_cannot_be_read_back_leaves_nothing_unwritten():
    # A full $TMPDIR: the spill file's last bytes cannot be written, so
    # handing it to the sink fails.  The newline the sink would have put
    # after another job's unterminated line must not be left queued with no
    # writer (the end of the run waited for it forever).
    loop, sink, read_end, write_end, _ = sink_to_pipe()
    sink.write("a", b"unterminated")
    drain(loop, sink, read_end)
    spill = SpillBuffer()
    spill._file = open("/dev/full", "w+b")  # writes fail: No space left on device
    spill.append(b"x" * 100)
    with pytest.raises(OSError):
        sink.write_spilled("b", spill)
    assert not sink.pending
    sink.write("c", b"later\n")
    data = drain(loop, sink, read_end)
    sink.close()
    loop.close()
    assert not sink.pending and data == b"\nlater\n"


def test_spill_buffer_moves_to_disk_and_reads_back_whole():
    spill = SpillBuffer()
    chunk = os.urandom(300000)
    for _ in range(10):
        spill.append(chunk)
    assert spill.size == 3000000 and spill._file is not None
    reader = spill.reader()
    data = b"".join(iter(lambda: reader.read(65536), b""))
    reader.close()
    assert data == chunk * 10


def test_job_stdin_is_not_clstrs_stdin(tmp_path):
    script = ("import sys; sys.path.insert(0, %r); "
              "from clstr.cli import main; sys.exit(main())" % os.getcwd())
    result = subprocess.run(["python3", "-c", script, "--ssh-command", "tests/fakessh",
                             "--no-multiplex", "-n", "a", "-j", "cat; echo end"],
                            input=b"clstr's own stdin\n", capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"end\n"
