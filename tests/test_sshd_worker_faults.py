"""``--workers`` in test_sshd_faults.py's fault mix, over the real loopback
sshd: a node refused, silent, rejecting the key, its sshd killed mid-job,
frozen mid-job, and an sshd throttling logins (MaxStartups).  Every job runs
exactly once, a job on a lost worker runs again elsewhere, and the run ends.

Each job appends its number to one file as its last act, so a job that ran
to its end twice is there twice.  The tests assert only what a user sees (that
file, stdout, the exit status, the joblog, -v's "retired" lines), never how
a worker reaches its node: they hold whether a slot's worker is an ssh login
of its own or a session through its host's master."""

import collections
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
    read_until,
    retired_lines,
    start_clstr,
    wait_for_file,
)

# The default (through masters, once workers use them) and an ssh login per
# slot.
MODES = [pytest.param((), id="default"), pytest.param(("--no-multiplex",), id="no-multiplex")]
JOBS = 24
# Three healthy nodes of two slots each, and a node to break: one slot, so
# that a fault reaches exactly one job (the node's first).
HEALTHY = [name for name in ("envnode001", "envnode002", "envnode003") for _ in range(2)]
HEALTHY_NAMES = {name.encode() for name in HEALTHY}
VICTIM = "envnode004"


def seq_jobs(directory, shared_dir, before, count=JOBS):
    """A job file of ``count`` jobs: job N runs ``before`` (shell text), then
    appends N to ``shared_dir``/done and prints "job N".  Returns its
    path."""
    done = os.path.join(shared_dir, "done")
    path = os.path.join(str(directory), "jobs")
    with open(path, "w") as jobs:
        for seq in range(1, count + 1):
            jobs.write(before + "echo %d >> %s; echo job %d\n" % (seq, done, seq))
    return path


def assert_every_job_ran_once(shared_dir, stdout, joblog, count=JOBS):
    """Each job ran to its end once (its number once in the done file), its
    output came once, and the joblog records it completed once."""
    expected = {seq: 1 for seq in range(1, count + 1)}
    with open(os.path.join(shared_dir, "done")) as done:
        assert collections.Counter(int(seq) for seq in done.read().split()) == expected
    assert sorted(stdout.splitlines()) == sorted(b"job %d" % seq for seq in expected)
    completed = collections.Counter(int(row[0]) for row in joblog_rows(joblog)
                                    if (row[6], row[7]) == (b"0", b"0"))
    assert completed == expected


@pytest.mark.parametrize("victim, options, reason", [
    ("dead001", (), rb"refused: .*Connection refused"),
    ("silent001", ("--connect-timeout", "2"), rb"connect timeout: "),
    ("badkey001", (), rb"auth: .*Permission denied"),
], ids=["refused", "silent", "key-rejected"])
@pytest.mark.parametrize("mode", MODES)
def test_a_node_broken_from_the_start_is_retired_and_every_job_runs_once(
        cluster, tmp_path, shared_dir, mode, victim, options, reason):
    # The jobs wait until the test has seen the broken node retired, so the
    # run cannot end before that node has been tried.
    go = os.path.join(shared_dir, "go")
    joblog = str(tmp_path / "joblog")
    process = start_clstr(cluster, "--workers", *mode, "-v", "--joblog", joblog, *options,
                          "-n", victim, *node_args(HEALTHY),
                          "-J", seq_jobs(tmp_path, shared_dir, wait_for_file(go)))
    try:
        said = read_until(process.stderr, b"node %s retired" % victim.encode())
        open(go, "w").close()
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, said + err
    assert_every_job_ran_once(shared_dir, out, joblog)
    retired = retired_lines(said + err)
    assert [name for name, _ in retired] == [victim.encode()], said + err
    assert re.match(reason, retired[0][1]), retired


# A job's first run on VICTIM breaks the node under it: the sshd process
# serving its worker is killed, or frozen with the job (a node that stops
# dead: nothing of it runs on, and TCP stays open).  {frozen}: where the
# test finds the frozen sshd and the job's process group (cut's: $$ may be
# the worker's, when the job is a fork of it) to kill.
KILLED = FIND_SESSION_SSHD + "kill -9 $session; sleep 60"
FROZEN = (FIND_SESSION_SSHD + "echo $session $(cut -d' ' -f5 /proc/self/stat) > {frozen}; "
          "kill -STOP $session; kill -STOP 0")


@pytest.mark.parametrize("fault", ["killed", "frozen"])
@pytest.mark.parametrize("mode", MODES)
def test_a_node_lost_mid_job_is_retired_and_its_job_runs_once_elsewhere(
        cluster, tmp_path, shared_dir, mode, fault):
    marker = "clstr-worker-%s-%s" % (fault, RUN_ID)
    frozen = os.path.join(shared_dir, "frozen")
    fault_text = {"killed": KILLED, "frozen": FROZEN.format(frozen=frozen)}[fault]
    once = os.path.join(shared_dir, "once")
    # The other jobs wait for the fault, so VICTIM is sure to get a job
    # (its worker may start last) and the run is under way when it breaks.
    before = ("export CLSTR_TEST_MARK=%s; "
              "if [ \"$CLSTR_TEST_NODE\" = %s ] && mkdir %s 2>/dev/null; then %s; fi; "
              % (marker, VICTIM, once, fault_text)) + wait_for_file(once)
    joblog = str(tmp_path / "joblog")
    try:
        # --alive-interval 1: a frozen node is found out in about 3 s.
        result = clstr(cluster, "--workers", *mode, "-v", "--alive-interval", "1",
                       "--joblog", joblog, *node_args(HEALTHY + [VICTIM]),
                       "-J", seq_jobs(tmp_path, shared_dir, before))
    finally:
        if os.path.exists(frozen):
            with open(frozen) as pids:
                session, group = (int(pid) for pid in pids.read().split())
            os.kill(session, signal.SIGKILL)
            os.killpg(group, signal.SIGKILL)
    assert result.returncode == 0, result.stderr
    assert_every_job_ran_once(shared_dir, result.stdout, joblog)
    retired = retired_lines(result.stderr)
    assert [name for name, _ in retired] == [VICTIM.encode()], result.stderr
    assert retired[0][1].startswith(b"connection lost"), retired
    # The node's one attempt was lost, and that job completed elsewhere.
    rows = joblog_rows(joblog)
    lost = [row for row in rows if row[1] == VICTIM.encode()]
    assert len(lost) == 1 and lost[0][6] != b"0", rows
    assert [row[1] in HEALTHY_NAMES for row in rows if row[0] == lost[0][0]
            and row[6] == b"0"] == [True], rows
    # Nothing of the lost attempt runs on to end a second time later.
    assert cluster.remote_processes_left(marker) == []


@pytest.mark.parametrize("mode", MODES)
def test_a_throttling_sshd_retires_no_node_and_every_job_runs_once(throttled_cluster, tmp_path,
                                                                   shared_dir, mode):
    # 32 hosts: 32 logins at once whether each slot logs in or each host's
    # master does, past the sshd's MaxStartups.
    joblog = str(tmp_path / "joblog")
    throttled = throttled_cluster.throttled_connections()
    result = clstr(throttled_cluster, "--workers", *mode, "-v", "--joblog", joblog,
                   *node_args(throttled_cluster.nodes(32)),
                   "-J", seq_jobs(tmp_path, shared_dir, "", count=96), timeout=300)
    assert result.returncode == 0, result.stderr
    # The sshd did drop logins (-v says so of a job's ssh, not of a master's).
    assert throttled_cluster.throttled_connections() > throttled
    assert_every_job_ran_once(shared_dir, result.stdout, joblog, count=96)
    assert retired_lines(result.stderr) == []
