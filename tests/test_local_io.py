"""clstr's own I/O failures are its own: a full disk under stdout or the
joblog stops the run cleanly (one line, exit 3, no node blamed, no remote job
left), a stalled reader never makes clstr unkillable, and a low open-files
limit runs fewer jobs at once instead of aborting."""

import errno
import fcntl
import itertools
import os
import re
import resource
import signal
import subprocess
import tempfile
import termios
import time

import pytest

from clstr.errors import LocalIOError
from clstr.exits import EXIT_LOCAL_IO
from clstr.loop import EventLoop
from clstr.output.sinks import Sink
from clstr_run import REPO, RUN_ID, clstr, clstr_argv, node_args, start_clstr

_serial = itertools.count(1)


def sleep_marker():
    """A number, unique to this test, that ``sleep`` accepts: the remote
    ``sleep`` itself carries it in its command line, whether or not the job's
    shell execs it (dash execs a job's last command, so a ``# comment``
    marker would vanish from the process that matters)."""
    return "3000.%s%03d" % (RUN_ID, next(_serial))


def after_sleeps(marker, count, command):
    """A job that runs ``command`` once ``count`` remote ``sleep <marker>``
    run (or after 30 s), so that what it sets off finds them running.  The
    pattern in brackets does not match its own command line."""
    pattern = "^sleep " + marker.replace(".", "[.]")
    return ("n=0; until [ \"$(pgrep -c -f '%s')\" -ge %d ] || [ $n -ge 300 ]; "
            "do n=$((n+1)); sleep 0.1; done; %s" % (pattern, count, command))


def local_masters(cluster):
    """Pids of this cluster's ControlMasters still running on this machine."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if b"ControlPersist" in cmdline and cluster.ssh_config.encode() in cmdline:
            found.add(int(entry))
    return found


def masters_left(cluster, before, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        left = local_masters(cluster) - before
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def clstr_to(cluster, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
    """Run clstr with its stdout or stderr given (``clstr()`` captures both)."""
    return subprocess.run(clstr_argv(cluster, *args), cwd=REPO, stdin=subprocess.DEVNULL,
                          stdout=stdout, stderr=stderr, timeout=120)


def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# -- stdout and stderr ------------------------------------------------------


@pytest.mark.parametrize("mode", ["--multiplex", "--no-multiplex"])
def test_stdout_on_a_full_disk_stops_the_run_without_blaming_nodes(cluster, tmp_path, mode):
    marker = sleep_marker()
    joblog = tmp_path / "joblog"
    before = local_masters(cluster)
    with open("/dev/full", "wb") as full:
        result = clstr_to(cluster, mode, "-v", "--joblog", str(joblog),
                       *node_args(cluster.nodes(4)),
                       "-j", after_sleeps(marker, 3, "echo hello"),
                       *(["-j", "sleep %s" % marker] * 3), stdout=full)
    stderr = result.stderr.decode()
    assert result.returncode == EXIT_LOCAL_IO, stderr
    assert "clstr: cannot write stdout: No space left on device" in stderr.splitlines()
    assert "Traceback" not in stderr
    assert "retired" not in stderr and "signal 9" not in stderr
    assert cluster.remote_processes_left(marker) == []
    assert masters_left(cluster, before) == set()
    # Stopped attempts are logged as stopped (ssh got TERM), never as KILLed.
    records = joblog.read_text().splitlines()[1:]
    assert all(line.split("\t")[7] in ("0", "15") for line in records), records


def test_stderr_on_a_full_disk_exits_with_the_local_io_status(cluster):
    marker = sleep_marker()
    with open("/dev/full", "wb") as full:
        result = clstr_to(cluster, "-n", "node001", "-n", "node002",
                       "-j", after_sleeps(marker, 1, "echo oops >&2"),
                       "-j", "sleep %s" % marker, stderr=full)
    assert result.returncode == EXIT_LOCAL_IO
    assert cluster.remote_processes_left(marker) == []


def test_a_write_error_after_ctrl_c_still_exits_with_the_local_io_status(cluster, tmp_path):
    # The job writes to stdout only once stopped: the disk is full by then,
    # and a lost write outranks the interrupt (exit 3, not 130).
    marker = sleep_marker()
    errors = tmp_path / "stderr"
    job = ("trap 'echo stopped; exit 1' TERM; echo started >&2; sleep %s & wait" % marker)
    with open("/dev/full", "wb") as full, open(str(errors), "wb") as stderr:
        process = start_clstr(cluster, "-n", "node001", "-j", job, stdout=full, stderr=stderr)
    try:
        assert wait_for(lambda: b"started" in errors.read_bytes()
                        and cluster.remote_processes(marker))
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == EXIT_LOCAL_IO, errors.read_bytes()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert b"clstr: cannot write stdout: No space left on device" in errors.read_bytes()
    assert cluster.remote_processes_left(marker) == []


def test_a_sink_reports_a_write_error_other_than_a_closed_reader():
    loop = EventLoop()
    errors = []
    with open("/dev/full", "wb") as full:
        sink = Sink(loop, full.fileno(), name="stdout", on_error=errors.append)
        sink.write("a", b"line\n")
        sink.write("a", b"dropped\n")
        sink.close()
    loop.close()
    assert len(errors) == 1 and isinstance(errors[0], LocalIOError)
    assert errors[0].what == "stdout" and errors[0].error.errno == errno.ENOSPC
    assert str(errors[0]) == "stdout: No space left on device"


def test_the_loop_hands_a_declared_error_to_its_handler_and_carries_on():
    loop = EventLoop()
    handled, ran, exits = [], [], []

    def fails():
        raise LocalIOError("stdout", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    def child_exit(code):
        exits.append(code)
        fails()

    loop.handle_errors((LocalIOError,), handled.append)
    loop.call_later(0, fails)
    loop.call_later(0, lambda: ran.append("timer"))
    # Two children whose exit callbacks both fail: both are still reaped.
    for _ in range(2):
        loop.spawn(["true"], 0, 1, 2, child_exit)

    def both_reaped():
        loop.call_later(0.01, loop.stop)
        loop.run()
        return len(exits) == 2

    assert wait_for(both_reaped, timeout=20)
    loop.close()
    assert ran == ["timer"] and exits == [0, 0] and len(handled) == 3


# -- the joblog on a file system that fills ---------------------------------


@pytest.fixture
def small_tmpfs():
    """A 64 KiB tmpfs, mounted for the test and always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tempfile.mkdtemp(prefix="clstr-tmpfs-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", path],
                             capture_output=True)
    if mounted.returncode:
        os.rmdir(path)
        pytest.skip("cannot mount a tmpfs here: %s" % mounted.stderr.decode().strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)
        os.rmdir(path)


def fill_leaving(directory, spare):
    """Fill the file system of ``directory`` but for ``spare`` bytes."""
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    size = 0
    try:
        while True:
            size += os.write(fd, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    os.ftruncate(fd, max(0, size - spare))
    os.close(fd)


def test_a_joblog_on_a_full_file_system_stops_the_run_and_names_the_joblog(cluster,
                                                                           small_tmpfs):
    marker = sleep_marker()
    joblog = os.path.join(small_tmpfs, "joblog")
    fill_leaving(small_tmpfs, 8192)
    padding = "x" * 400
    jobs = ["-j", "sleep %s" % marker, "-j", after_sleeps(marker, 1, "echo first")]
    for n in range(60):
        jobs += ["-j", "echo %d; : %s" % (n, padding)]
    before = local_masters(cluster)
    result = clstr(cluster, "-v", "--joblog", joblog, *node_args(cluster.nodes(3)), *jobs)
    stderr = result.stderr.decode()
    assert result.returncode == EXIT_LOCAL_IO, stderr
    assert ("clstr: cannot write %s: No space left on device" % joblog) in stderr.splitlines()
    assert "Traceback" not in stderr
    assert "retired" not in stderr and "signal 9" not in stderr
    assert cluster.remote_processes_left(marker) == []
    assert masters_left(cluster, before) == set()


def test_an_active_nodes_file_on_a_full_file_system_stops_the_run(cluster, small_tmpfs):
    marker = sleep_marker()
    active = os.path.join(small_tmpfs, "active")
    # No room for even one block: the file's first line of a running job
    # (commands are cut to 200 bytes there) cannot be written.
    fill_leaving(small_tmpfs, 0)
    job = "sleep %s; : %s" % (marker, "x" * 3000)
    result = clstr(cluster, "-v", "-A", active, *node_args(cluster.nodes(3)), *["-j", job] * 3)
    stderr = result.stderr.decode()
    assert result.returncode == EXIT_LOCAL_IO, stderr
    assert ("clstr: cannot write %s: No space left on device" % active) in stderr.splitlines()
    assert "Traceback" not in stderr and "retired" not in stderr
    assert cluster.remote_processes_left(marker) == []


def test_an_output_dir_on_a_full_file_system_stops_the_run(cluster, small_tmpfs):
    marker = sleep_marker()
    out = os.path.join(small_tmpfs, "out")
    fill_leaving(small_tmpfs, 8192)
    result = clstr(cluster, "-v", "--output-dir", out, *node_args(cluster.nodes(2)),
                   "-j", "sleep %s" % marker,
                   "-j", after_sleeps(marker, 1, "head -c 100000 /dev/zero"))
    stderr = result.stderr.decode()
    assert result.returncode == EXIT_LOCAL_IO, stderr
    assert re.search(r"^clstr: cannot write %s\S*: No space left on device$" % re.escape(out),
                     stderr, re.M), stderr
    assert "Traceback" not in stderr and "retired" not in stderr
    assert cluster.remote_processes_left(marker) == []
    assert not [name for name in os.listdir(out) if name.endswith(".partial")]


# -- a reader that stops reading --------------------------------------------


def pipe_is_full(read_end):
    capacity = fcntl.fcntl(read_end, 1032)  # F_GETPIPE_SZ
    queued = fcntl.ioctl(read_end, termios.FIONREAD, b"\0\0\0\0")
    # Bytes are queued in pages, and a write may leave the last one short.
    return int.from_bytes(queued, "little") >= capacity - 8192


def test_a_second_signal_leaves_at_once_while_the_reader_is_stalled(cluster, tmp_path):
    marker = sleep_marker()
    read_end, write_end = os.pipe()
    errors = tmp_path / "stderr"
    # Far more than a pipe holds, less than clstr's backpressure mark: clstr
    # reads all of it and holds what the pipe cannot take.
    job = "seq 400000; echo ready >&2; sleep %s" % marker
    with open(errors, "wb") as stderr:
        process = start_clstr(cluster, "-n", "node001", "-j", job,
                              stdout=write_end, stderr=stderr)
    os.close(write_end)
    try:
        assert wait_for(lambda: b"ready" in errors.read_bytes()
                        and cluster.remote_processes(marker) and pipe_is_full(read_end))
        process.send_signal(signal.SIGINT)
        # The first signal stops the job (and so the run) ...
        assert cluster.remote_processes_left(marker, timeout=20) == []
        # ... but clstr still holds output nobody reads; a second signal
        # drops it and leaves now.
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(read_end)


def test_a_slow_reader_still_gets_every_line_at_a_normal_end(cluster, tmp_path):
    joblog = tmp_path / "joblog"
    read_end, write_end = os.pipe()
    process = start_clstr(cluster, "--no-multiplex", "--joblog", str(joblog), "-n", "node001",
                          "-j", "seq 200000", stdout=write_end)
    os.close(write_end)
    try:
        # Start reading only once the job has ended and clstr holds the rest.
        assert wait_for(lambda: joblog.exists() and len(joblog.read_bytes().splitlines()) == 2)
        with os.fdopen(read_end, "rb") as reader:
            data = reader.read()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert data.splitlines() == [b"%d" % n for n in range(1, 200001)]


# -- the open-files limit ---------------------------------------------------


def open_files_limit(limit):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return set_limit


@pytest.mark.parametrize("mode", ["--multiplex", "--no-multiplex"])
def test_a_low_open_files_limit_runs_fewer_jobs_at_once_and_finishes(cluster, tmp_path, mode):
    jobs = tmp_path / "jobs"
    jobs.write_text("".join("echo job %d\n" % n for n in range(400)))
    result = clstr(cluster, mode, *node_args(cluster.nodes(200)), "-J", str(jobs),
                   preexec_fn=open_files_limit(128), timeout=600)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert sorted(result.stdout.splitlines()) == sorted(b"job %d" % n for n in range(400))
    said = re.findall(r"clstr: only (\d+) of 200 slots can run at once: the open-files "
                      r"limit is 128 \(raise it with ulimit -n\)", stderr)
    assert len(said) == 1, stderr
    assert 0 < int(said[0]) < 64


def test_too_many_open_files_while_starting_a_job_waits_for_a_running_one_to_end(cluster):
    # Make clstr's estimate far too generous, so that starting jobs really
    # runs out of fds: the job goes back in the queue and nothing aborts.
    script = ("import sys, clstr.startlimits as startlimits; "
              "import clstr.transport.interface as transport; "
              "transport.Transport.fds_per_attempt = 1; "
              "startlimits.FDS_SPARE = -1000; from clstr.cli import main; sys.exit(main())")
    argv = clstr_argv(cluster, "--no-multiplex", *node_args(cluster.nodes(60)),
                      *["-j", "echo done"] * 120)
    argv[1:3] = ["-c", script]
    result = subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                            preexec_fn=open_files_limit(64), timeout=600)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert result.stdout == b"done\n" * 120
    said = re.findall(r"clstr: only (\d+) of 60 slots can run at once: the open-files "
                      r"limit is 64", stderr)
    assert len(said) == 1 and "retired" not in stderr, stderr
