"""Failures handled like a production scheduler, with faults injected into
the real loopback sshd."""

import os
import re
import signal

import pytest

from clstr_run import (
    FIND_SESSION_SSHD,
    RUN_ID,
    clstr,
    joblog_rows,
    node_args,
    read_lines,
    read_until,
    retired_lines,
    start_clstr,
    wait_for_file,
    wait_until,
)


def sleeping(cluster, marker):
    """The jobs' ``sleep`` processes carrying ``marker`` in their environment."""
    return [pid for pid, cmdline in cluster.remote_processes(marker)
            if cmdline.startswith("sleep ")]


@pytest.mark.parametrize("kind, expected", [
    ("badkey", rb"auth: .*Permission denied \(publickey\)"),
    ("wronghost", rb"host key: .*Host key verification failed"),
    ("dead", rb"refused: .*Connection refused"),
])
@pytest.mark.parametrize("mode", ["--multiplex", "--no-multiplex"])
def test_broken_node_is_retired_with_ssh_reason_and_job_runs_elsewhere(cluster, kind, expected,
                                                                       mode, shared_dir):
    bad = "%s001" % kind
    # The jobs wait until the broken node has been retired (the test sees
    # it said), so the run cannot end before its failure is noticed.
    go = os.path.join(shared_dir, "go")
    wait = wait_for_file(go)
    process = start_clstr(cluster, mode, "-v", "--connect-timeout", "60", "-n", bad,
                          "-n", "node001", "-j", wait + "echo a", "-j", wait + "echo b",
                          "-j", wait + "echo c")
    try:
        said = read_until(process.stderr, b"node %s retired" % bad.encode())
        open(go, "w").close()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, said + err
    assert sorted(out.splitlines()) == [b"a", b"b", b"c"]
    retired = retired_lines(said + err)
    assert [name for name, _ in retired] == [bad.encode()]
    # ssh's own reason: a fast failure, never the 60 s connect timeout.
    assert re.match(expected, retired[0][1]), retired


@pytest.mark.parametrize("mode", ["--multiplex", "--no-multiplex"])
def test_silent_node_is_retired_within_the_connect_timeout(cluster, mode):
    # Without the connect timeout ssh would wait for the banner for ever, and
    # clstr() would give up after 120 s.
    result = clstr(cluster, mode, "-v", "--connect-timeout", "2", "-n", "silent001",
                   "-n", "node001", "-j", "echo a", "-j", "sleep 3; echo b")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"a", b"b"]
    retired = retired_lines(result.stderr)
    assert retired and retired[0][0] == b"silent001"
    assert retired[0][1].startswith(b"connect timeout: "), retired


@pytest.mark.parametrize("mode", ["--multiplex", "--no-multiplex"])
def test_node_dying_mid_job_requeues_the_job(cluster, shared_dir, mode):
    flag = os.path.join(shared_dir, "died")
    # The first attempt kills the sshd process serving its connection.
    job = ("if [ ! -e {f} ]; then touch {f}; " + FIND_SESSION_SSHD + "kill -9 $session; "
           "sleep 5; fi; echo finished").format(f=flag)
    result = clstr(cluster, mode, "-v", *node_args(cluster.nodes(2)), "-j", job)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"finished\n"
    retired = retired_lines(result.stderr)
    assert len(retired) == 1 and retired[0][1].startswith(b"connection lost"), result.stderr


def test_hung_node_is_detected_by_keepalives_and_its_job_requeued(cluster, shared_dir):
    flag = os.path.join(shared_dir, "hung")
    # The first attempt freezes the sshd process serving it: TCP stays open,
    # nothing answers (for longer than clstr() waits: only keepalives end it).
    job = ("if [ ! -e {f} ]; then touch {f}; " + FIND_SESSION_SSHD + "echo $session > {f}; "
           "kill -STOP $session; sleep 600; fi; echo finished").format(f=flag)
    try:
        result = clstr(cluster, "--no-multiplex", "-v", "--alive-interval", "1",
                       *node_args(cluster.nodes(2)), "-j", job)
    finally:
        with open(flag) as frozen:
            pid = int(frozen.read().strip() or 0)
        if pid:
            os.kill(pid, signal.SIGKILL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"finished\n"
    retired = retired_lines(result.stderr)
    assert len(retired) == 1 and retired[0][1].startswith(b"connection lost"), result.stderr
    assert b"not responding" in retired[0][1], retired  # ssh's keepalives said so


def test_max_attempts_gives_a_poison_job_up_instead_of_draining_the_cluster(cluster):
    result = clstr(cluster, "--max-attempts", "2", *node_args(cluster.nodes(5)),
                   "-j", "exit 7", "-j", "echo fine")
    assert result.returncode == 1
    assert result.stdout == b"fine\n"
    assert len(retired_lines(result.stderr + b"")) == 0  # not verbose: no live messages
    report = result.stderr.decode()
    assert "2 nodes retired" in report
    assert re.search(r"job 1 'exit 7': node\d+: job exit 7; node\d+: job exit 7", report)


def test_job_failure_job_keeps_the_node(cluster):
    result = clstr(cluster, "--job-failure", "job", "-n", "node001",
                   "-j", "exit 3", "-j", "echo after")
    assert result.returncode == 1
    assert result.stdout == b"after\n"
    assert "node retired" not in result.stderr.decode()
    assert "job 1 'exit 3': node001: job exit 3" in result.stderr.decode()


def test_timeout_kills_the_job_on_the_node_too(cluster):
    marker = "clstr-timeout-" + RUN_ID
    # The marker is in the environment of the job's sleep, which dash execs.
    # The sleep outlasts clstr()'s 120 s: only the timeout ends the run.
    try:
        result = clstr(cluster, "--timeout", "1", "-n", "node001",
                       "-j", "CLSTR_TEST_MARK=%s sleep 600" % marker, "-j", "echo quick")
        assert result.returncode == 1
        assert result.stdout == b"quick\n"
        assert "timeout: stopped after 1s" in result.stderr.decode()
        assert cluster.remote_processes_left(marker) == []
    finally:
        for pid, _ in cluster.remote_processes(marker):  # left by a failed test only
            os.kill(pid, signal.SIGKILL)


def test_joblog_has_gnu_parallel_columns_and_ssh_failures_show_as_255(cluster, tmp_path):
    joblog = tmp_path / "joblog"
    result = clstr(cluster, "--joblog", str(joblog), "--no-multiplex", "-n", "dead001",
                   "-n", "node001", "-j", "echo a", "-j", "echo b")
    assert result.returncode == 0, result.stderr
    lines = joblog.read_text().splitlines()
    assert lines[0].split("\t") == ["Seq", "Host", "Starttime", "JobRuntime", "Send",
                                    "Receive", "Exitval", "Signal", "Command"]
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 9 for row in rows)
    ok = sorted((row[0], row[1], row[6], row[8]) for row in rows if row[6] == "0")
    assert ok == [("1", "node001", "0", "echo a"), ("2", "node001", "0", "echo b")]
    failed = [row for row in rows if row[6] != "0"]
    assert all(row[1] == "dead001" and row[6] == "255" for row in failed)


def test_interrupted_run_resumed_from_joblog_runs_every_job_exactly_once(cluster, tmp_path):
    joblog = tmp_path / "joblog"
    jobs = tmp_path / "jobs"
    jobs.write_text("".join("sleep 0.3; echo job %d\n" % n for n in range(30)))
    first = start_clstr(cluster, "--joblog", str(joblog), *node_args(cluster.nodes(3)),
                        "-J", str(jobs))
    try:
        wait_until(lambda: any(row[6] == b"0" for row in joblog_rows(joblog)), timeout=60,
                   what="a completed job in the joblog")
        first.send_signal(signal.SIGINT)
        out1, _ = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 130
    second = clstr(cluster, "--joblog", str(joblog), "--resume", *node_args(cluster.nodes(3)),
                   "-J", str(jobs))
    assert second.returncode == 0, second.stderr
    done_first = out1.splitlines()
    assert 0 < len(done_first) < 30
    assert sorted(done_first + second.stdout.splitlines()) == sorted(
        b"job %d" % n for n in range(30))


@pytest.mark.parametrize("mode", ["--multiplex", "--no-multiplex"])
def test_maxstartups_throttling_does_not_retire_a_host_listed_32_times(throttled_cluster, mode):
    result = clstr(throttled_cluster, mode, "-v", "--max-sessions", "10",
                   *node_args(["node001"] * 32), *(["-j", "echo ok"] * 64), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [b"ok"] * 64
    assert retired_lines(result.stderr) == []


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_termination_signals_stop_remote_jobs_with_shell_exit_status(cluster, signum, status):
    marker = "clstr-signal-%s-%02d" % (RUN_ID, signum)
    process = start_clstr(cluster, *node_args(cluster.nodes(2)),
                          *(["-j", "CLSTR_TEST_MARK=%s sleep 60" % marker] * 2))
    try:
        wait_until(lambda: len(sleeping(cluster, marker)) == 2, what="both jobs running")
        process.send_signal(signum)
        assert process.wait(timeout=20) == status
        assert cluster.remote_processes_left(marker) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_clstr_killed_outright_still_leaves_no_remote_jobs(cluster):
    marker = "clstr-kill9-" + RUN_ID
    process = start_clstr(cluster, "--no-multiplex", "-n", "node001",
                          "-j", "export CLSTR_TEST_MARK=%s; sleep 60 & sleep 61" % marker)
    wait_until(lambda: len(sleeping(cluster, marker)) == 2, what="the job's two sleeps")
    process.kill()
    process.wait(timeout=10)
    # clstr's ssh children outlive it, but the pipe they had as stdin is
    # closed now, so the remote wrapper sees EOF and stops the job.
    assert cluster.remote_processes_left(marker) == []


@pytest.mark.parametrize("mode", ["--multiplex", "--no-multiplex"])
def test_retry_nodes_puts_a_node_that_comes_back_to_work(cluster, tmp_path, shared_dir, mode):
    joblog = tmp_path / "joblog"
    # late001 refuses connections until the test has seen it retired; then
    # it comes up, and a probe (1 s later) finds it back.  Jobs wait until it
    # is up, so work is left for it.
    back = os.path.join(shared_dir, "back")
    jobs = []
    for n in range(16):
        jobs += ["-j", wait_for_file(back) + "sleep 0.2; echo done %d" % n]
    process = start_clstr(cluster, mode, "-v", "--retry-nodes", "1", "--joblog", str(joblog),
                          "-n", "late001", "-n", "node001", *jobs)
    try:
        said = read_until(process.stderr, b"node late001 retired")
        cluster.bring_up_late_nodes()
        open(back, "w").close()
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        cluster.take_down_late_nodes()
    stderr = said + err
    assert process.returncode == 0, stderr
    assert sorted(out.splitlines()) == sorted(b"done %d" % n for n in range(16))
    retired = [name for name, _ in retired_lines(stderr)]
    assert set(retired) == {b"late001"} and 1 <= len(retired) <= 3, stderr
    rows = [line.split(b"\t") for line in joblog.read_bytes().splitlines()[1:]]
    assert any(row[1] == b"late001" and row[6] == b"0" for row in rows), rows
    assert b"retired" not in stderr.split(b"is back")[-1]


def test_pending_retries_do_not_keep_a_dead_cluster_waiting(cluster):
    # A retry due after clstr()'s 120 s: the run must end without it.
    result = clstr(cluster, "--retry-nodes", "600", "-n", "dead001", "-j", "true")
    assert result.returncode == 1, result.stderr


@pytest.mark.parametrize("prefix, shell", [("node", b"dash"), ("bashnode", b"bash")])
def test_ctrl_c_stops_whole_job_trees_under_dash_and_bash_login_shells(cluster, prefix, shell):
    if prefix == "bashnode" and not cluster.bash_user:
        pytest.skip("a second login user (with bash) can only be made as root")
    marker = "clstr-shell-%s-%s" % (RUN_ID, prefix)
    # "$m-child" is spelled out only in the grandchild's command line, which
    # starts after the echo: two of them mean both jobs have spoken.
    job = ('m=%s; echo "[${BASH_VERSION:-dash}]"; sh -c "sleep 60; : $m-child" & sleep 61; : $m'
           % marker)
    process = start_clstr(cluster, *node_args(["%s001" % prefix, "%s002" % prefix]),
                          *(["-j", job] * 2))
    try:
        children = marker + "-child"
        wait_until(lambda: len(cluster.remote_processes(children)) == 2,
                   what="both jobs' grandchildren")
        said = read_lines(process.stdout, 2)  # both jobs' lines reached clstr and us
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 130
        assert cluster.remote_processes_left(marker) == []
        said = b"".join(said + [process.stdout.read()]).splitlines()
        assert len(said) == 2
        assert all((line != b"[dash]") == (shell == b"bash") for line in said), said
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
