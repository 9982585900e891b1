"""--gather over the real sshd: -E on many nodes, each distinct output once
under its folded nodes, stderr apart, failures reported as without it."""

import re
import signal
import subprocess

import pytest

from clstr_run import (
    RUN_ID,
    clstr,
    joblog_rows,
    node_args,
    require_program,
    start_clstr,
    wait_until,
)

# Each node says one of three things, chosen from its name (the sessions'
# CLSTR_TEST_NODE, see cluster.ssh_command_naming_sessions); node081-100
# also warn on stderr, and node050's job fails after answering.
JOB = ('n=${CLSTR_TEST_NODE#node}; '
       'case $n in 007|06[1-9]|070) echo beta;; '
       '08[1-9]|09[0-9]|100) echo gamma; echo "low disk" >&2;; '
       '*) echo alpha;; esac; '
       'if [ "$n" = 050 ]; then echo "node050 fails" >&2; exit 3; fi')


def block(names, *lines):
    return "---------------\n%s\n---------------\n" % names + "".join(
        line + "\n" for line in lines)


def report(stderr):
    """clstr's own lines, ports made alike."""
    return [re.sub(r"port \d+", "port PORT", line) for line in stderr.splitlines()
            if line.startswith("clstr: ")]


@pytest.fixture(scope="module")
def hundred_nodes(cluster, tmp_path_factory):
    names = ["node%03d" % n for n in range(1, 101)]
    naming = cluster.ssh_command_naming_sessions(names, tmp_path_factory.mktemp("gather"))
    result = clstr(cluster, "--ssh-command", naming, "-n", "node[001-100]", "-E", JOB,
                   "--gather", timeout=300)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def test_gather_on_100_nodes_prints_3_groups_with_their_folded_nodes_largest_first(
        hundred_nodes):
    _, stdout, _ = hundred_nodes
    assert stdout == (block("node[001-006,008-060,071-080] (69)", "alpha")
                      + block("node[081-100] (20)", "gamma")
                      + block("node[007,061-070] (11)", "beta"))


def test_gathered_stderr_goes_to_stderr_apart_before_the_report(hundred_nodes):
    _, stdout, stderr = hundred_nodes
    assert "low disk" not in stdout and "fails" not in stdout
    assert stderr.startswith(block("node[081-100] (20) stderr", "low disk")
                             + block("node050 stderr", "node050 fails") + "clstr: ")


def test_a_node_whose_job_fails_is_retired_and_reported_its_answer_gathered(hundred_nodes):
    status, stdout, stderr = hundred_nodes
    assert status == 1
    lines = report(stderr)
    assert lines[:3] == ["clstr: 1 node retired:", "clstr:   node050: job exit 3",
                         "clstr: 1 job not completed:"]
    # The command is shown cut to its first 200 bytes.
    assert lines[3].startswith("clstr:   job 50 'n=${CLSTR_TEST_NODE#node}; ")
    assert lines[3].endswith(": node050: job exit 3")
    assert lines[4:] == ["clstr: 1 of 100 jobs were not completed"]


def test_exit_status_and_report_are_those_of_the_same_run_without_gather(cluster, tmp_path):
    names = ["node%03d" % n for n in range(45, 53)]
    naming = cluster.ssh_command_naming_sessions(names, tmp_path)
    # node052's job is stopped by --timeout after it printed two lines:
    # that answer, cut short, is not gathered.
    job = JOB + '; [ "$n" = 052 ] && { echo partial; sleep 3000.%s052; }; true' % RUN_ID
    runs = {}
    for gather in ([], ["--gather"]):
        result = clstr(cluster, "--ssh-command", naming, *node_args(names + ["dead001"]),
                       "--timeout", "3", "-E", job, *gather)
        runs[bool(gather)] = (result.returncode, report(result.stderr.decode()),
                              result.stdout.decode())
    assert runs[True][:2] == runs[False][:2]
    assert runs[True][0] == 1
    assert "clstr:   node050: job exit 3" in runs[True][1]
    assert any(line.startswith("clstr:   dead001: refused: ") for line in runs[True][1])
    assert any(line.endswith("node052: timeout: stopped after 3s") for line in runs[True][1])
    assert "partial" in runs[False][2]
    assert runs[True][2] == block("node[045-051] (7)", "alpha")


def test_gathered_groups_are_those_of_clush_b(cluster, tmp_path):
    # clush -b, ClusterShell's gathering, run over the same ssh config.
    clush = require_program("clush")
    names = ["node%03d" % n for n in range(55, 86)]
    naming = cluster.ssh_command_naming_sessions(names, tmp_path)
    ours = clstr(cluster, "--ssh-command", naming, "-n", "node[055-085]", "-E", JOB, "--gather")
    theirs = subprocess.run([clush, "-b", "-o", naming.split(" ", 1)[1], "-w", "node[055-085]",
                             JOB], capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    assert ours.stdout.decode() == theirs.stdout.decode() == (
        block("node[055-060,071-080] (16)", "alpha") + block("node[061-070] (10)", "beta")
        + block("node[081-085] (5)", "gamma"))


def test_ctrl_c_prints_what_the_nodes_that_answered_said(cluster, tmp_path):
    names = ["node%03d" % n for n in range(1, 7)]
    naming = cluster.ssh_command_naming_sessions(names, tmp_path)
    marker = "clstr-gather-" + RUN_ID
    # node006 hangs; the five others answer.
    job = ('[ "$CLSTR_TEST_NODE" = node006 ] && { echo hanging; '
           'CLSTR_TEST_MARK=%s sleep 300; }; echo answered' % marker)
    joblog = tmp_path / "joblog"
    process = start_clstr(cluster, "--ssh-command", naming, "-n", "node[001-006]", "-E", job,
                          "--gather", "--joblog", str(joblog))
    try:
        wait_until(lambda: len(joblog_rows(joblog)) == 5 and cluster.remote_processes(marker),
                   what="five nodes answered and node006 hanging")
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=30)
        assert process.returncode == 130
        # node006's answer, cut short by the stop, is not shown.
        assert stdout.decode() == block("node[001-005] (5)", "answered")
        assert cluster.remote_processes_left(marker) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
