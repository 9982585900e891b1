"""What clstr says about a run, over the real loopback sshd: ssh's chatter
stays where the user's configuration put it, failures carry one name in
-v, the report and index.tsv, and every job not completed says why."""

import re

import pytest

from clstr_run import clstr, node_args

PERMANENTLY_ADDED = b"Permanently added"


class QuietSsh:
    """A user's ssh set-up common on lab clusters: ``LogLevel ERROR`` and
    ``StrictHostKeyChecking no``, with a known_hosts file that starts empty,
    so plain ssh would add host keys without a word."""

    def __init__(self, cluster, directory):
        known_hosts = directory / "known_hosts"
        known_hosts.write_text("")
        config = directory / "ssh_config"

        def block(pattern, port, key="user_key"):
            return "\n".join([
                "Host %s" % pattern,
                "    HostName 127.0.0.1",
                "    Port %d" % port,
                "    User %s" % cluster.user,
                "    IdentityFile %s" % cluster.path(key),
                "    IdentitiesOnly yes",
                "    UserKnownHostsFile %s" % known_hosts,
                "    StrictHostKeyChecking no",
                "    LogLevel ERROR",
                ""])

        config.write_text(block("node*", cluster.port) + block("dead*", cluster.dead_port)
                          + block("badkey*", cluster.port, key="other_key"))
        self.ssh_command = "ssh -F %s" % config


@pytest.fixture
def quiet_ssh(cluster, tmp_path):
    return QuietSsh(cluster, tmp_path)


# -- ssh's own messages (issue 13, item 1) -------------------------------------

@pytest.mark.parametrize("args, out", [
    (["-E", "echo hi"], [b"hi", b"hi"]),
    (["-E", "echo hi", "--tag"], [b"node001: hi", b"node002: hi"]),
    (["--no-multiplex", "-j", "echo a", "-j", "echo b"], [b"a", b"b"]),
    (["--no-multiplex", "--tag", "-j", "echo a", "-j", "echo b"],
     [b"node001: a", b"node002: b"]),
    (["-j", "echo a", "-j", "echo b"], [b"a", b"b"]),
], ids=["each-node", "each-node-tag", "no-multiplex", "no-multiplex-tag", "multiplex"])
def test_ssh_chatter_the_users_log_level_hides_never_reaches_the_output(quiet_ssh, args, out):
    result = clstr(quiet_ssh, "-n", "node001", "-n", "node002", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    lines = sorted(result.stdout.splitlines())
    if out[0].startswith(b"node001: "):
        # Which node runs which job is the scheduler's choice; -E runs one
        # job on each node, a job list any job anywhere.
        assert all(re.match(rb"node00[12]: ", line) for line in lines), lines
        if "-E" in args:
            assert lines == out
    assert sorted(re.sub(rb"^node00\d: ", b"", line) for line in lines) == sorted(
        re.sub(rb"^node00\d: ", b"", line) for line in out)


def test_job_stderr_passes_untouched_even_when_it_reads_like_ssh(quiet_ssh):
    # A job may run ssh itself: clstr never filters its stderr by pattern.
    job = "echo \"Warning: Permanently added 'x' (ED25519) to the list of known hosts.\" >&2"
    result = clstr(quiet_ssh, "--no-multiplex", "-n", "node001", "-j", job)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(PERMANENTLY_ADDED) == 1, result.stderr


@pytest.mark.parametrize("args", [["-E", "echo hi"], ["--no-multiplex", "-j", "echo hi"],
                                  ["-j", "echo hi"]],
                         ids=["each-node", "no-multiplex", "multiplex"])
def test_refused_and_rejected_nodes_are_reported_in_ssh_words_and_nothing_else(quiet_ssh,
                                                                             args):
    result = clstr(quiet_ssh, "-n", "dead001", "-n", "badkey001", *args)
    assert result.returncode == 1
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    # Only clstr's report: ssh's raw errors no longer come first.
    assert all(line.startswith("clstr: ") for line in lines), lines
    assert re.search(r"^clstr:   dead001: refused: connect to host 127\.0\.0\.1 port \d+: "
                     r"Connection refused$", result.stderr.decode(), re.M), lines
    assert re.search(r"^clstr:   badkey001: auth: \S+@127\.0\.0\.1: Permission denied "
                     r"\(publickey\)$", result.stderr.decode(), re.M), lines


def test_a_job_failed_on_several_nodes_joins_their_words_without_doubled_punctuation(cluster):
    result = clstr(cluster, "--no-multiplex", "-n", "badkey001", "-n", "wronghost001",
                   "-j", "echo hi")
    assert result.returncode == 1
    report = result.stderr.decode()
    line = [line for line in report.splitlines() if line.startswith("clstr:   job 1 ")]
    assert len(line) == 1, report
    assert "(publickey); " in line[0] or line[0].endswith("(publickey)"), line
    assert ".;" not in report and not re.search(r"\.$", line[0]), report


# -- one vocabulary (issue 13, item 4) -----------------------------------------

def test_v_the_report_and_index_tsv_name_each_failure_alike(cluster, tmp_path):
    out = tmp_path / "out"
    result = clstr(cluster, "-v", "--output-dir", str(out), "--timeout", "1",
                   "--job-failure", "job", "-n", "node001",
                   "-j", "sleep 30", "-j", "exit 3", "-j", "true")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "clstr: job 1 on node001: timeout: stopped after 1s; given up" in err, err
    assert "clstr:   job 1 'sleep 30': node001: timeout: stopped after 1s" in err, err
    assert "clstr: job 2 on node001: job exit 3; given up" in err, err
    assert "clstr:   job 2 'exit 3': node001: job exit 3" in err, err
    index = (out / "index.tsv").read_text().splitlines()
    assert index[0] == "seq\tstatus\thost\tcommand"
    assert sorted(index[1:]) == ["1\ttimeout\tnode001\tsleep 30",
                                 "2\tjob exit 3\tnode001\texit 3",
                                 "3\t0\tnode001\ttrue"]


def test_a_connect_timeout_is_not_called_a_timeout(cluster, tmp_path):
    out = tmp_path / "out"
    result = clstr(cluster, "--no-multiplex", "-v", "--connect-timeout", "1",
                   "--max-attempts", "1", "--output-dir", str(out), "-n", "silent001",
                   "-j", "echo hi")
    assert result.returncode == 1
    assert "clstr: node silent001 retired: connect timeout: " in result.stderr.decode()
    assert (out / "index.tsv").read_text().splitlines()[1:] == [
        "1\tconnect timeout\tsilent001\techo hi"]


def test_the_joblog_keeps_gnu_parallels_nine_columns_for_every_kind(cluster, tmp_path):
    joblog = tmp_path / "joblog"
    result = clstr(cluster, "--joblog", str(joblog), "--no-multiplex", "--timeout", "1",
                   "--job-failure", "job", "-n", "dead001", "-n", "node001",
                   "-j", "sleep 30", "-j", "exit 3", "-j", "true")
    assert result.returncode == 1
    lines = joblog.read_text().splitlines()
    assert lines[0] == "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
    rows = [line.split("\t") for line in lines[1:]]
    assert rows and all(len(row) == 9 for row in rows)
    assert all(re.fullmatch(r"-?\d+", field) for row in rows for field in row[4:8]), rows


# -- jobs that never started ---------------------------------------------------

def test_jobs_left_by_max_node_uses_say_so(cluster):
    result = clstr(cluster, "-u", "1", "-n", "node001", "-j", "true", "-j", "true")
    assert result.returncode == 1
    assert ("clstr:   job 2 'true': never started: every slot used up (--max-node-uses 1)"
            in result.stderr.decode()), result.stderr


def test_jobs_left_without_a_node_say_so(cluster):
    result = clstr(cluster, "--multiplex", *node_args(["dead001"]), "-j", "true")
    assert result.returncode == 1
    assert "clstr:   job 1 'true': never started: no node left" in result.stderr.decode(), \
        result.stderr
