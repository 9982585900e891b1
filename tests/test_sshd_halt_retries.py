"""--halt and --retries over the real sshd, each beside GNU parallel running
the same jobs here (no -S: the jobs are the same shell lines, and GNU
parallel's own scheduling is what is compared).  Outputs are compared byte
for byte where the order is fixed (one slot), sorted where it is not;
clstr's exit status is checked against clstr's own table, never GNU
parallel's (which gives the failing job's status, or a count)."""

import os
import subprocess
import tempfile

import pytest

from clstr_run import (
    RUN_ID,
    clstr,
    joblog_rows,
    local_processes,
    local_processes_left,
    node_args,
    read_until,
    require_program,
    start_clstr,
    wait_until,
)


def wait_for_file(path):
    """Shell code that waits (at most 30 s) for ``path`` to exist."""
    return ("i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
            % path)


def parallel_argv(*args):
    return [require_program("parallel"), "--will-cite"] + list(args)


def run_parallel(*args):
    """GNU parallel here, in a HOME of its own (it keeps files in ~/.parallel)."""
    with tempfile.TemporaryDirectory() as home:
        return subprocess.run(parallel_argv(*args), capture_output=True, timeout=120,
                              stdin=subprocess.DEVNULL, env=dict(os.environ, HOME=home))


def start_parallel(home, *args):
    return subprocess.Popen(parallel_argv(*args), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, HOME=home))


def finished(process, timeout=60):
    """``process``'s (stdout, stderr) once it has exited, within ``timeout``
    seconds; the process is killed (and the test fails) if it has not."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("still running after %gs" % timeout)


# -- --halt, one slot: the same jobs in the same order ----------------------------

ONE_SLOT_EXAMPLES = [
    # (--halt, jobs, what both print, clstr's exit status, the job that
    # halted and the rule as clstr's report spells it)
    ("now,fail=1", ["echo 1", "echo 2; exit 1", "echo 3"], b"1\n2\n", 1, (2, "now,fail=1")),
    ("soon,fail=1", ["echo 1", "echo 2; exit 1", "echo 3"], b"1\n2\n", 1, (2, "soon,fail=1")),
    ("2", ["echo 1", "echo 2; exit 1", "echo 3"], b"1\n2\n", 1, (2, "now,fail=1")),
    ("soon,fail=2", ["exit 1", "echo 2", "echo 3; exit 4", "echo 4"], b"2\n3\n", 1,
     (3, "soon,fail=2")),
    ("now,success=1", ["echo 1; exit 1", "echo 2", "echo 3"], b"1\n2\n", 0,
     (2, "now,success=1")),
    ("-1", ["echo 1; exit 1", "echo 2", "echo 3"], b"1\n2\n", 0, (2, "soon,success=1")),
    # 4 of 8 jobs failed: 50%, after job 7.
    ("soon,fail=50%", ["echo %s; exit %s" % (n, n) for n in "01010110"],
     b"0\n1\n0\n1\n0\n1\n1\n", 1, (7, "soon,fail=50%")),
    # 2 of 6 is less than 34%: every job runs, and two were given up.
    ("now,fail=34%", ["echo %s; exit %s" % (n, n) for n in "011000"],
     b"0\n1\n1\n0\n0\n0\n", 1, None),
]


@pytest.mark.parametrize("rule, jobs, printed, status, halted", ONE_SLOT_EXAMPLES)
def test_halt_on_one_slot_runs_what_gnu_parallel_runs(cluster, rule, jobs, printed, status,
                                                      halted):
    reference = run_parallel("-j1", "--halt", rule, ":::", *jobs)
    assert reference.stdout == printed, reference.stderr
    args = []
    for job in jobs:
        args += ["-j", job]
    result = clstr(cluster, "-n", cluster.nodes(1)[0], "--halt", rule, *args)
    assert result.stdout == printed, result.stderr
    assert result.returncode == status, result.stderr
    if halted is None:
        assert b"halted" not in result.stderr, result.stderr
    else:
        by, spelled = halted
        said = "clstr: the run was halted (--halt %s) by job %d %r on node001: " % (
            spelled, by, jobs[by - 1])
        assert said.encode() in result.stderr, result.stderr


# -- --halt now and soon with jobs running -------------------------------------


def halting_jobs(flags, mark, third):
    """Job 1 sleeps for long (``mark`` in its command line) once it has told
    so; job 2 fails when the test lets it; job 3 must never start."""
    return ["touch %s/started; sleep %s" % (flags, mark),
            wait_for_file("%s/go" % flags) + "echo two; exit 3",
            "touch %s; echo three" % third]


def test_halt_now_stops_the_running_job_on_its_node_as_gnu_parallel_does(cluster, shared_dir):
    mark = "600.%s1" % RUN_ID
    flags = tempfile.mkdtemp(dir=shared_dir)
    os.chmod(flags, 0o777)
    third = os.path.join(flags, "third")
    log = os.path.join(flags, "joblog")
    args = []
    for job in halting_jobs(flags, mark, third):
        args += ["-j", job]
    process = start_clstr(cluster, "-v", "--joblog", log, "--halt", "now,fail=1",
                          *node_args(cluster.nodes(2)), *args)
    try:
        wait_until(lambda: cluster.remote_processes(mark), what="the sleeping job on its node")
        open(os.path.join(flags, "go"), "w").close()
        out, err = finished(process)
    finally:
        process.kill()
    assert process.returncode == 1, err
    assert out == b"two\n", err
    assert cluster.remote_processes_left(mark) == []
    assert not os.path.exists(third)
    text = err.decode()
    assert "the run was halted (--halt now,fail=1) by job 2 " in text, text
    assert ": interrupted: stopped by --halt now,fail=1" in text, text
    assert "job 3 'touch %s; echo three': never started: the run was halted" % third in text
    # Stopping it was clstr's doing: no lost connection, no node retired.
    assert "connection lost" not in text and "retired" not in text, text
    [stopped] = [row for row in joblog_rows(log) if row[0] == b"1"]
    assert stopped[7] == b"15", stopped

    reference_mark = "600.%s2" % RUN_ID
    reference_flags = tempfile.mkdtemp(dir=shared_dir)
    reference_third = os.path.join(reference_flags, "third")
    with tempfile.TemporaryDirectory() as home:
        reference = start_parallel(home, "-j2", "--halt", "now,fail=1", ":::",
                                   *halting_jobs(reference_flags, reference_mark,
                                                 reference_third))
        try:
            wait_until(lambda: local_processes(reference_mark), what="GNU parallel's sleeping job")
            open(os.path.join(reference_flags, "go"), "w").close()
            reference_out, _ = finished(reference)
        finally:
            reference.kill()
    assert reference_out == out
    assert local_processes_left(reference_mark) == []
    assert not os.path.exists(reference_third)


def soon_jobs(flags, third):
    """Job 1 runs until the test lets it end; job 2 fails once job 1 has
    started; job 3 must never start."""
    return ["touch %s/started; " % flags + wait_for_file("%s/release" % flags) + "echo one",
            wait_for_file("%s/started" % flags) + "echo two; exit 3",
            "touch %s; echo three" % third]


@pytest.mark.parametrize("tool", ["clstr", "parallel"])
def test_halt_soon_lets_the_running_job_finish_and_starts_no_other(cluster, shared_dir, tool):
    flags = tempfile.mkdtemp(dir=shared_dir)
    os.chmod(flags, 0o777)
    third = os.path.join(flags, "third")
    jobs = soon_jobs(flags, third)
    with tempfile.TemporaryDirectory() as home:
        if tool == "clstr":
            args = []
            for job in jobs:
                args += ["-j", job]
            process = start_clstr(cluster, "-v", "--halt", "soon,fail=1",
                                  *node_args(cluster.nodes(2)), *args)
            # What each tool says when it stops starting jobs.
            news = (b"clstr: --halt soon,fail=1 reached: starting no more jobs, "
                    b"waiting for 1 running")
        else:
            process = start_parallel(home, "-j2", "--halt", "soon,fail=1", ":::", *jobs)
            news = b"Starting no more jobs. Waiting for 1 jobs to finish."
        try:
            said = read_until(process.stderr, news)
            open(os.path.join(flags, "release"), "w").close()
            out, err = finished(process)
        finally:
            process.kill()
    assert sorted(out.splitlines()) == [b"one", b"two"], said + err
    assert not os.path.exists(third)
    if tool == "clstr":
        text = (said + err).decode()
        assert process.returncode == 1, text
        assert "the run was halted (--halt soon,fail=1) by job 2 " in text, text
        assert "never started: the run was halted" in text, text
        assert "retired" not in text, text


# -- --retries ------------------------------------------------------------------


def flaky(counter, fails):
    """A job that fails ``fails`` times, then succeeds, counting its runs in
    ``counter`` (every node is this machine, so all share the file)."""
    return ("n=$(cat %s 2>/dev/null || echo 0); n=$((n+1)); echo $n > %s; "
            "[ $n -gt %d ] || exit 1; echo ok after $n" % (counter, counter, fails))


def runs(counter):
    with open(counter) as handle:
        return int(handle.read())


def test_retries_rerun_a_flaky_job_on_its_one_node_as_gnu_parallel_does(cluster, shared_dir,
                                                                        tmp_path):
    reference_counter = str(tmp_path / "parallel-count")
    reference = run_parallel("--retries", "3", ":::", flaky(reference_counter, 2))
    assert (reference.returncode, reference.stdout) == (0, b"ok after 3\n"), reference.stderr
    counter = os.path.join(shared_dir, "clstr-count")
    log = str(tmp_path / "joblog")
    result = clstr(cluster, "-v", "--retries", "3", "--joblog", log, "-n", "node001",
                   "-j", flaky(counter, 2))
    assert (result.returncode, result.stdout) == (0, reference.stdout), result.stderr
    assert runs(counter) == runs(reference_counter) == 3
    assert [(row[1], row[6]) for row in joblog_rows(log)] == [
        (b"node001", b"1"), (b"node001", b"1"), (b"node001", b"0")]
    assert b"retired" not in result.stderr, result.stderr


def test_retries_n_runs_a_failing_job_n_times_in_all_as_gnu_parallel_does(cluster, shared_dir,
                                                                         tmp_path):
    reference_counter = str(tmp_path / "parallel-count")
    reference = run_parallel("--retries", "2", ":::", flaky(reference_counter, 5))
    assert reference.stdout == b""
    counter = os.path.join(shared_dir, "clstr-count")
    job = flaky(counter, 5)
    result = clstr(cluster, "--retries", "2", "-n", "node001", "-j", job)
    assert result.returncode == 1 and result.stdout == b"", result.stderr
    assert runs(counter) == runs(reference_counter) == 2
    assert ("job 1 %r: node001: job exit 1; node001: job exit 1" % job).encode() in result.stderr


def test_retries_go_to_a_node_where_the_job_has_not_failed(cluster, shared_dir, tmp_path):
    # Each job fails twice: its second run must be on the other node, its
    # third on either (both have seen it fail once).
    log = str(tmp_path / "joblog")
    args = []
    for n in range(4):
        args += ["-j", flaky(os.path.join(shared_dir, "count%d" % n), 2)]
    result = clstr(cluster, "-v", "--retries", "3", "--joblog", log,
                   *node_args(cluster.nodes(2)), *args)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"ok after 3"] * 4
    assert b"retired" not in result.stderr, result.stderr
    hosts = {}
    for row in joblog_rows(log):
        hosts.setdefault(row[0], []).append(row[1])
    assert len(hosts) == 4
    for seq, tried in hosts.items():
        assert len(tried) == 3 and tried[0] != tried[1], (seq, tried)
