"""The job reports its own end (endreport.py), over the real ssh client and
through clstr's mux client against a real loopback sshd: a job's own status
is believed whatever ssh says, and a job whose end report never came lost
its connection."""

import os

import pytest

from clstr_run import FIND_SESSION_SSHD, clstr, joblog_rows, node_args

TRANSPORTS = [[], ["--no-multiplex"]]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exit_255_is_the_jobs_own_and_keeps_its_node_under_job_failure_job(cluster, transport):
    result = clstr(cluster, *transport, "-v", "--job-failure", "job",
                   *node_args(cluster.nodes(1)), "-j", "exit 255", "-j", "echo after")
    assert result.returncode == 1, result.stderr
    assert result.stdout == b"after\n"
    assert b"job exit 255" in result.stderr, result.stderr
    assert b"retired" not in result.stderr, result.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_job_whose_end_report_is_lost_runs_again_elsewhere(cluster, shared_dir, transport,
                                                             tmp_path):
    # The first attempt kills the sshd serving its session once it runs:
    # the job started, and its end report can never come.
    flag = os.path.join(shared_dir, "lost-%d-%d" % (os.getpid(), len(transport)))
    job = ("if [ ! -e %s ]; then touch %s; %s kill -9 $session; sleep 30; fi; echo done"
           % (flag, flag, FIND_SESSION_SSHD))
    log = tmp_path / "joblog"
    result = clstr(cluster, *transport, "-v", "--joblog", str(log), "--job-failure", "job",
                   *node_args(cluster.nodes(2)), "-j", job, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"done\n"
    assert b"connection lost" in result.stderr, result.stderr
    rows = joblog_rows(str(log))
    assert sorted(row[6] for row in rows) == [b"0", b"255"], rows


def test_a_job_stopped_by_timeout_is_logged_as_signal_15_with_its_status(cluster, tmp_path):
    log = tmp_path / "joblog"
    result = clstr(cluster, "--timeout", "1", "--joblog", str(log),
                   *node_args(cluster.nodes(1)), "-j", "sleep 60")
    assert result.returncode == 1
    [row] = joblog_rows(str(log))
    assert (row[6], row[7]) == (b"143", b"15"), row
