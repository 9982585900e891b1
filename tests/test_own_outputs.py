"""A run and the files it writes: Ctrl-C wherever clstr waits before or
outside its run (no traceback), outputs that belong to one run only, and
outputs that must not be an input."""

import errno
import fcntl
import os
import signal
import subprocess
import sys
import termios

import pytest
from test_local_io import after_sleeps, sleep_marker, small_tmpfs  # noqa: F401 (a fixture)

from clstr.exits import EXIT_LOCAL_IO
from clstr_run import REPO, clstr, node_args, start_clstr, wait_until

FAKESSH = os.path.join(REPO, "tests", "fakessh")
F_GETPIPE_SZ = 1032  # fcntl.F_GETPIPE_SZ from Python 3.10 on


def start(*args, **kwargs):
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "clstr", "--ssh-command", FAKESSH]
                            + list(args), cwd=REPO, **kwargs)


def blocked_opening_a_fifo(pid):
    """True while ``pid`` waits in open() for a FIFO's other end (the
    kernel's wait_for_partner)."""
    try:
        with open("/proc/%d/wchan" % pid) as wchan:
            return wchan.read() == "wait_for_partner"
    except OSError:
        return False


def interrupted_quietly(process):
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err
    return out, err


# -- Ctrl-C -------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--joblog", "--stdout", "--stderr"])
def test_ctrl_c_while_opening_a_fifo_nobody_reads_is_quiet(tmp_path, option):
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    # A joblog and an output directory from an earlier run: the run has not
    # started, so they stay as they were.
    joblog, results = tmp_path / "joblog", tmp_path / "results"
    results.mkdir()
    (results / "index.tsv").write_text("earlier\n")
    (results / "1.out").write_text("earlier\n")
    joblog.write_text("earlier\n")
    extra = [] if option == "--joblog" else ["--joblog", str(joblog)]
    process = start("-n", "a", "-j", "echo x", option, str(fifo),
                    "--output-dir", str(results), *extra)
    try:
        wait_until(lambda: blocked_opening_a_fifo(process.pid), what="the FIFO being opened")
        interrupted_quietly(process)
    finally:
        process.kill()
        process.wait()
    assert joblog.read_text() == "earlier\n"
    assert sorted(os.listdir(str(results))) == ["1.out", "index.tsv"]
    assert (results / "index.tsv").read_text() == "earlier\n"


def test_ctrl_c_while_waiting_for_a_node_list_is_quiet(tmp_path):
    fifo = tmp_path / "nodes"
    os.mkfifo(str(fifo))
    process = start("-N", str(fifo), "-j", "echo x")
    writer = None
    try:
        def reader_there():
            try:
                return os.open(str(fifo), os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
                return None
        # clstr opened the node file and now waits for its lines.
        writer = wait_until(reader_there, what="clstr reading the node file")
        interrupted_quietly(process)
    finally:
        if writer is not None:
            os.close(writer)
        process.kill()
        process.wait()


def test_ctrl_c_while_a_slow_reader_takes_the_dry_run_is_quiet(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.write_text("echo %s\n" % ("x" * 100) * 20000)
    read_end, write_end = os.pipe()
    try:
        process = start("-n", "a", "-J", str(jobs), "--dry-run", stdout=write_end)
        os.close(write_end)
        write_end = None
        try:
            size = fcntl.fcntl(read_end, F_GETPIPE_SZ)
            held = bytearray(4)

            def pipe_full():
                fcntl.ioctl(read_end, termios.FIONREAD, held)
                return int.from_bytes(held, sys.byteorder) >= size // 2
            # Output is under way, and 2 MB cannot fit: clstr waits for us.
            wait_until(pipe_full, what="the pipe to fill")
            interrupted_quietly(process)
        finally:
            process.kill()
            process.wait()
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)


# -- one run per output ---------------------------------------------------------


def wait_for_flag(path):
    """Shell code that waits (at most 30 s) for ``path`` to exist."""
    return ("i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"
            % path)


@pytest.mark.parametrize("option", ["--joblog", "--output-dir"])
def test_a_second_run_given_a_running_runs_output_stops_and_changes_nothing(
        cluster, shared_dir, tmp_path, option):
    target = tmp_path / "shared-output"
    go = os.path.join(shared_dir, "go")
    first = start_clstr(cluster, option, str(target), "-n", "node001",
                        "-j", "echo first-done", "-j", wait_for_flag(go) + "; echo first")
    try:
        joblog = target if option == "--joblog" else target / "index.tsv"
        wait_until(lambda: b"echo first-done" in (joblog.read_bytes() if joblog.exists()
                                                  else b""), what="the first run's record")
        before = joblog.read_bytes()
        second_out = tmp_path / "second.out"
        extra = []
        if option == "--output-dir":
            # A joblog of its own, free: left as it was all the same.
            own_joblog = tmp_path / "own-joblog"
            own_joblog.write_text("an earlier run's\n")
            extra = ["--joblog", str(own_joblog)]
        second = clstr(cluster, option, str(target), "-o", str(second_out), "-n", "node002",
                       "-j", "echo second", *extra)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.decode().splitlines()
        assert lines == ["clstr: error: %s %s is in use by another clstr run"
                         % (option, target)], lines
        assert joblog.read_bytes() == before
        assert not second_out.exists()
        if extra:
            assert own_joblog.read_text() == "an earlier run's\n"
        open(go, "w").close()
        out, err = first.communicate(timeout=60)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, err
    records = joblog.read_bytes()
    assert records.startswith(before) and b"\techo second" not in records, records
    assert b"\t%s; echo first" % wait_for_flag(go).encode() in records, records


def test_output_dir_shows_no_earlier_runs_files_for_a_job_that_did_not_complete(
        cluster, shared_dir, tmp_path):
    results = tmp_path / "results"
    fail = os.path.join(shared_dir, "fail")
    args = ["--output-dir", str(results), "-n", "node001",
            "-j", "echo one", "-j", "[ -e %s ] && exit 3; echo two" % fail]
    assert clstr(cluster, *args).returncode == 0
    (results / "notes.txt").write_text("mine")
    (results / "7.out.txt").write_text("mine too")
    open(fail, "w").close()
    second = clstr(cluster, *args)
    assert second.returncode == 1, second.stderr
    assert sorted(os.listdir(str(results))) == [
        "1.err", "1.out", "7.out.txt", "index.tsv", "notes.txt"]
    assert (results / "notes.txt").read_text() == "mine"


def test_output_dir_on_resume_keeps_only_files_of_jobs_it_shows_completed(
        cluster, shared_dir, tmp_path):
    results, joblog = tmp_path / "results", tmp_path / "joblog"
    fail = os.path.join(shared_dir, "fail")
    open(fail, "w").close()
    args = ["--output-dir", str(results), "--joblog", str(joblog), "-n", "node001",
            "--job-failure", "job", "-j", "echo one",
            "-j", "[ -e %s ] && exit 3; echo two" % fail, "-j", "echo three"]
    assert clstr(cluster, *args).returncode == 1
    # Files a job that never completed cannot have made (an earlier run's).
    (results / "2.out").write_text("stale")
    (results / "9.err").write_text("stale")
    (results / "3.out").write_text("stale; job 3 completes again")
    joblog.write_bytes(b"".join(line for line in joblog.read_bytes().splitlines(True)
                                if b"echo three" not in line))
    again = clstr(cluster, *args, "--resume")
    assert again.returncode == 1, again.stderr
    assert sorted(os.listdir(str(results))) == ["1.err", "1.out", "3.err", "3.out", "index.tsv"]
    assert (results / "1.out").read_text() == "one\n"
    assert (results / "3.out").read_text() == "three\n"


# -- an output is never an input ------------------------------------------------------


@pytest.mark.parametrize("option", ["--joblog", "--stdout", "--stderr", "--active-nodes"])
@pytest.mark.parametrize("input_option", ["-J", "-N"])
def test_an_output_that_is_a_job_or_node_file_is_a_usage_error(tmp_path, option, input_option):
    jobs, nodes = tmp_path / "jobs", tmp_path / "nodes"
    jobs.write_text("echo a\n")
    nodes.write_text("localhost\n")
    shared = str(jobs if input_option == "-J" else nodes)
    before = open(shared, "rb").read()
    process = start("-N", str(nodes), "-J", str(jobs), option, shared)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2, err
    lines = err.decode().splitlines()
    assert len(lines) == 1 and "%s %s is the" % (option, shared) in lines[0], lines
    assert open(shared, "rb").read() == before


def test_clstrs_own_stdout_appending_to_its_job_file_is_a_usage_error(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.write_text("echo a\n")
    with open(str(jobs), "ab") as appending:
        process = start("-n", "localhost", "-J", str(jobs), stdout=appending)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 2, err
    assert b"clstr's stdout is the job file" in err
    assert jobs.read_text() == "echo a\n"


# -- write errors -----------------------------------------------------------------


def test_a_closed_stderr_pipe_stops_the_run_with_the_local_io_status(cluster):
    # As `clstr ... 2>&1 >/dev/null | head -1`: stderr's reader is gone.
    # The jobs are stopped (the sleep would take an hour), nothing hangs.
    marker = sleep_marker()
    read_end, write_end = os.pipe()
    try:
        process = start_clstr(cluster, "-n", "node001", "-n", "node002",
                              "-j", "sleep %s" % marker,
                              "-j", after_sleeps(marker, 1, "i=0; while [ $i -lt 2000 ]; do "
                                                 "echo err $i >&2; i=$((i+1)); done"),
                              stdout=subprocess.DEVNULL, stderr=write_end)
        os.close(write_end)
        write_end = None
        os.close(read_end)
        read_end = None
        try:
            process.wait(timeout=90)
        finally:
            process.kill()
            process.wait()
    finally:
        for fd in (read_end, write_end):
            if fd is not None:
                os.close(fd)
    assert process.returncode == EXIT_LOCAL_IO
    assert cluster.remote_processes_left(marker) == []


def test_a_full_tmpdir_under_long_lines_stops_the_run_and_never_hangs_its_end(
        cluster, small_tmpfs):  # noqa: F811 (the fixture imported above)
    # Lines past 1 MiB wait in temporary files.  The end of such a run once
    # waited forever for a line separator queued with no writer (about one
    # run in ten; the unit test in test_unit_io.py hits it every time).
    env = dict(os.environ, TMPDIR=small_tmpfs)
    for _ in range(3):
        result = clstr(cluster, "-v", *node_args(cluster.nodes(4) * 2),
                       *(["-j", "head -c 3000000 /dev/zero | tr '\\0' x; echo"] * 8), env=env)
        stderr = result.stderr.decode()
        assert result.returncode == EXIT_LOCAL_IO, stderr
        assert ("clstr: cannot write a temporary file in %s: No space left on device"
                % small_tmpfs) in stderr.splitlines()
        assert "retired" not in stderr and "Traceback" not in stderr


def test_resume_cuts_a_torn_last_index_line_before_appending(tmp_path):
    from clstr.userfiles import OutputDir
    results = tmp_path / "results"
    results.mkdir()
    (results / "index.tsv").write_bytes(b"seq\tstatus\thost\tcommand\n1\t0\ta\techo one\n2\t0\ta")
    (results / "1.out").write_bytes(b"one\n")
    (results / "2.out").write_bytes(b"two\n")
    outdir = OutputDir(str(results), resume=True)
    outdir.start()
    outdir.record(b"2\t0\ta\techo two\n")
    outdir.close()
    assert (results / "index.tsv").read_bytes() == (
        b"seq\tstatus\thost\tcommand\n1\t0\ta\techo one\n2\t0\ta\techo two\n")
    assert sorted(os.listdir(str(results))) == ["1.out", "index.tsv"]
