"""``--workers`` over the real loopback sshd, through the hosts' masters
(a session per slot) and through the ssh client (``--no-multiplex``: an ssh
login per slot): each job keeps the guarantees of a job in its own session.
The worker itself, run locally, is in test_unit_worker.py."""

import os
import signal

import pytest

from clstr_run import FIND_SESSION_SSHD, RUN_ID, clstr, joblog_rows, node_args, retired_lines

THROUGH_MASTERS = ("--workers",)
SSH_CLIENT = ("--workers", "--no-multiplex")


@pytest.fixture(params=[THROUGH_MASTERS, SSH_CLIENT], ids=["masters", "ssh-client"])
def workers(request):
    return request.param


def marker_jobs(tmp_path, shared_dir, count):
    """A job file of ``count`` jobs, each appending a line to a file of its
    own in ``shared_dir``; returns (its path, the marker files' directory)."""
    path = tmp_path / "jobs.txt"
    path.write_text("".join("echo ran >> %s/%d\n" % (shared_dir, n) for n in range(count)))
    return str(path), shared_dir


def test_workers_run_every_job_exactly_once(workers, cluster, tmp_path, shared_dir):
    jobs, markers = marker_jobs(tmp_path, shared_dir, 200)
    result = clstr(cluster, *workers, *node_args(cluster.nodes(4) * 2), "-J", jobs)
    assert result.returncode == 0, result.stderr
    for n in range(200):
        with open(os.path.join(markers, str(n))) as marker:
            assert marker.read() == "ran\n", n


def test_workers_log_in_once_per_slot_not_once_per_job(workers, cluster):
    before = len(cluster.accepted_logins())
    result = clstr(cluster, *workers, *node_args(cluster.nodes(3) * 2),
                   *(["-j", "echo ok"] * 60))
    logins = len(cluster.accepted_logins()) - before
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [b"ok"] * 60
    # 3 hosts of 2 slots, 60 jobs: a login per master, or per slot.
    assert logins == 3 if workers is THROUGH_MASTERS else 1 <= logins <= 6, logins


@pytest.mark.parametrize("prefix", ["node", "bashnode"], ids=["sh-login", "bash-login"])
def test_a_job_runs_in_the_login_shell_as_without_workers(workers, cluster, prefix):
    # sh (dash) has no job control without a tty: its jobs are `sh -c` from
    # a worker in bash; bash's are forks of the worker.  Either way the
    # shell that runs the job's text is the login shell.
    # The binary's name, not its path: /bin and /usr/bin may be apart.
    job = ["-j", 'basename "$(readlink /proc/$$/exe)"; echo ${BASH_VERSION:+bash}']
    host = ["-n", cluster.nodes(1, prefix=prefix)[0]]
    alone = clstr(cluster, *host, *job)
    assert alone.returncode == 0, alone.stderr
    expected = b"bash\nbash\n" if prefix == "bashnode" else b"dash\n\n"
    assert alone.stdout == expected
    under_workers = clstr(cluster, *workers, *host, *job, *job)
    assert under_workers.returncode == 0, under_workers.stderr
    assert under_workers.stdout == expected * 2


def test_a_jobs_cd_and_export_do_not_reach_the_next_job(workers, cluster):
    result = clstr(cluster, *workers, "-n", "node001",
                   "-j", "cd /; export CLSTR_LEAK=1", "-j", "echo ${CLSTR_LEAK-unset} $(pwd)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [b"unset", os.path.expanduser("~" + cluster.user).encode()]


def test_timeout_stops_one_job_and_a_new_worker_runs_the_next(workers, cluster, tmp_path):
    marker = "clstr-workers-timeout-" + RUN_ID
    joblog = str(tmp_path / "joblog")
    before = len(cluster.accepted_logins())
    # $PPID of a job is its worker; the sleep outlasts clstr()'s 120 s.  A
    # stop ends the worker (EOF on its frames): the next job has a new one,
    # through the same master (a login of its own without masters).
    try:
        result = clstr(cluster, *workers, "--timeout", "2", "--joblog", joblog, "-n", "node001",
                       "-j", "echo $PPID", "-j", "CLSTR_TEST_MARK=%s sleep 600" % marker,
                       "-j", "echo $PPID")
        logins = len(cluster.accepted_logins()) - before
        assert result.returncode == 1, result.stderr
        rows = {int(row[0]): row for row in joblog_rows(joblog)}
        assert [(rows[n][6], rows[n][7]) for n in (1, 2, 3)] == [
            (b"0", b"0"), (b"143", b"15"), (b"0", b"0")], result.stderr
        first, last = result.stdout.split()
        assert first != last, (first, last)
        assert logins == (1 if workers == THROUGH_MASTERS else 2), logins
        assert cluster.remote_processes_left(marker) == []
    finally:
        for pid, _ in cluster.remote_processes(marker):  # left by a failed test only
            os.kill(pid, signal.SIGKILL)


def test_a_refused_node_is_retired_and_its_job_reruns_elsewhere(workers, cluster):
    result = clstr(cluster, *workers, "-v", "--connect-timeout", "600",
                   "-n", cluster.dead_nodes(1)[0], "-n", cluster.nodes(1)[0],
                   "-j", "echo one", "-j", "echo two", "-j", "echo three")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"one", b"three", b"two"]
    retired = retired_lines(result.stderr)
    assert len(retired) == 1 and retired[0][0] == b"dead001", result.stderr
    assert retired[0][1].startswith(b"refused: "), retired


def test_a_session_killed_mid_job_requeues_that_job_once(workers, cluster, shared_dir):
    flag = os.path.join(shared_dir, "died")
    runs = os.path.join(shared_dir, "runs")
    # The first attempt kills the sshd process serving its worker's session.
    job = ("echo attempt >> {r}; if [ ! -e {f} ]; then touch {f}; " + FIND_SESSION_SSHD
           + "kill -9 $session; sleep 5; fi; echo finished").format(f=flag, r=runs)
    result = clstr(cluster, *workers, "-v", *node_args(cluster.nodes(2)), "-j", job,
                   "-j", "echo other")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"finished", b"other"]
    with open(runs) as attempts:
        assert attempts.read() == "attempt\n" * 2  # killed once, then run once
    retired = retired_lines(result.stderr)
    assert len(retired) == 1 and retired[0][1].startswith(b"connection lost"), result.stderr
