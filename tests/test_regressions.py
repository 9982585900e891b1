"""Behaviours that once survived a deliberate bug in clstr (tests/mutants/
holds the bugs): each test here fails on the bug it names."""

import os
import re
import stat
import subprocess
import sys
import threading

import pytest

from clstr_run import (
    REPO,
    clstr,
    clstr_argv,
    joblog_rows,
    node_args,
    retired_lines,
    start_clstr,
    wait_until,
)
from cluster import SSHD, LoopbackCluster

FAKESSH = os.path.join(REPO, "tests", "fakessh")


def dedicated_cluster(**settings):
    """A LoopbackCluster of the test's own: what its sshd logs is the test's
    alone, whatever else runs at the same time."""
    if not os.path.exists(SSHD):
        pytest.skip("%s not installed (apt-get install openssh-server)" % SSHD)
    return LoopbackCluster(**settings)


# -- multiplexing -----------------------------------------------------------


def test_each_master_logs_in_once_and_a_hosts_jobs_use_only_its_own_masters(shared_dir):
    # 3 slots on envnode001 at 2 sessions per master: 2 masters; 1 slot on
    # envnode002: 1 master.  Far more jobs than slots: without multiplexing
    # (or with jobs on someone else's master) sshd sees more logins, or a
    # host's jobs arrive on another host's connection.  Each job waits
    # (bounded) until envnode002 has run one, so its master is always used.
    flag = os.path.join(shared_dir, "ran-on-")
    job = ('echo "$CLSTR_TEST_NODE $SSH_CONNECTION"; touch %s$CLSTR_TEST_NODE; i=0; '
           'while [ ! -e %senvnode002 ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done'
           % (flag, flag))
    with dedicated_cluster() as cluster:
        hosts = ["envnode001"] * 3 + ["envnode002"]
        result = clstr(cluster, "--tag", "--max-sessions", "2", *node_args(hosts),
                       *(["-j", job] * 24))
        logins = cluster.accepted_logins()
    assert result.returncode == 0, result.stderr
    ports = {}
    for line in result.stdout.splitlines():
        tag, said = line.split(b": ", 1)
        node, client_port = said.split()[0], int(said.split()[2])
        assert node == tag, line
        ports.setdefault(tag, set()).add(client_port)
    assert sum(1 for _ in result.stdout.splitlines()) == 24
    # Every master logs in once (one may not be up before the last job
    # ends), and jobs log in never.
    assert len(logins) <= 3, logins
    assert set().union(*ports.values()) <= set(logins), (ports, logins)
    assert len(ports[b"envnode001"]) <= 2 and len(ports[b"envnode002"]) == 1, ports
    assert not ports[b"envnode001"] & ports.get(b"envnode002", set()), ports


# -- the active-nodes file ------------------------------------------------------


def test_active_nodes_file_is_replaced_never_rewritten_in_place(cluster, shared_dir, tmp_path):
    # A reader holding the file open keeps the listing it opened: the new
    # one is a new file renamed over the old (another inode).
    active = tmp_path / "active"
    go = os.path.join(shared_dir, "go")
    process = start_clstr(cluster, "-A", str(active), "-n", "node001",
                          "-j", "i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.05; "
                                "i=$((i+1)); done; echo done" % go)
    try:
        wait_until(lambda: active.exists() and active.read_bytes(), what="a listed job")
        with open(active, "rb") as reader:
            listed = os.fstat(reader.fileno()).st_ino
            open(go, "w").close()
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            assert out == b"done\n"
            assert reader.read() == b"node001: <'Job' %r>\n" % (
                "i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.05; "
                "i=$((i+1)); done; echo done" % go)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert active.read_bytes() == b""
    assert os.stat(active).st_ino != listed
    assert stat.S_IMODE(os.stat(active).st_mode) == 0o644


# -- --resume ---------------------------------------------------------------------


def test_resume_keeps_the_joblog_and_never_reruns_commands_with_tabs_backslashes_newlines(
        cluster, tmp_path):
    joblog = tmp_path / "joblog"
    jobs = ["printf '%s\\n' 'tab\there'", "echo 'back\\slash'", "echo 'two\nlines'",
            "echo plain"]
    args = ["--joblog", str(joblog), *node_args(cluster.nodes(2))]
    for job in jobs:
        args += ["-j", job]
    first = clstr(cluster, *args)
    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.splitlines()) == sorted(
        [b"tab\there", b"back\\slash", b"two", b"lines", b"plain"])
    logged = joblog.read_bytes()
    assert len(joblog_rows(joblog)) == 4
    for _ in range(2):
        again = clstr(cluster, "--resume", *args)
        assert again.returncode == 0, again.stderr
        assert again.stdout == b""
        # Appended to, never truncated; nothing ran, so nothing was added.
        assert joblog.read_bytes() == logged


# -- output -----------------------------------------------------------------------


def test_stdout_and_stderr_on_one_pipe_keep_every_line_whole_under_a_slow_reader(cluster):
    # 2>&1: both streams are one pipe.  A slow reader keeps it full, so
    # writes are partial; two writers of one pipe would cut lines.
    job = ("i=0; while [ $i -lt 100 ]; do printf '%%s\\n' %s; printf '%%s\\n' %s >&2; "
           "i=$((i+1)); done")
    jobs = []
    letters = "abcdefghijklmnop"
    for n in range(8):
        jobs += ["-j", job % (letters[2 * n] * 3000, letters[2 * n + 1] * 3000)]
    process = subprocess.Popen(clstr_argv(cluster, *node_args(cluster.nodes(8)), *jobs),
                               cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    received = []
    try:
        while True:
            chunk = process.stdout.read1(4096)
            if not chunk:
                break
            received.append(chunk)
            threading.Event().wait(0.0005)  # a slow reader: the pipe stays full
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = b"".join(received).splitlines()
    assert len(lines) == 8 * 2 * 100
    for line in lines:
        assert len(line) == 3000 and line == line[:1] * 3000, line[:80]


# -- MaxStartups ------------------------------------------------------------------


def test_throttled_masters_back_off_and_every_host_finishes_without_retiring():
    # sshd drops every unauthenticated connection past 3 at once, and 32
    # hosts start their masters together: most are throttled at first.
    with dedicated_cluster(max_startups="3:100:3") as cluster:
        result = clstr(cluster, "--multiplex", "-v", *node_args(cluster.nodes(32)),
                       *(["-j", "echo ok"] * 64), timeout=300)
        throttled = cluster.throttled_connections()
        logins = cluster.accepted_logins()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [b"ok"] * 64
    assert retired_lines(result.stderr) == []
    assert throttled > 0, "sshd never throttled: the test proves nothing"
    # A throttled master is tried again, not given up for direct logins:
    # every job ran through its host's one master.
    assert b"connection sharing unavailable" not in result.stderr, result.stderr
    assert len(logins) <= 32, logins


def test_a_refused_mux_session_is_throttling_and_the_node_does_all_its_jobs():
    # sshd allows 2 sessions per connection, clstr is told 4: the master
    # refuses every session past 2.  That says "busy", not "broken".
    with dedicated_cluster(max_sessions=2) as cluster:
        result = clstr(cluster, "--multiplex", "-v", "--max-sessions", "4",
                       *node_args(["node001"] * 4),
                       *(["-j", "sleep 0.2; echo ok"] * 16), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [b"ok"] * 16
    assert retired_lines(result.stderr) == []
    assert b"throttled" in result.stderr, "no session was refused: the test proves nothing"


# -- host names ---------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--node=-oProxyCommand"],
    ["-n-oProxyCommand"],
    ["-n", "a,-oProxyCommand"],
    ["-N", "NODEFILE"],
])
def test_a_host_name_starting_with_a_dash_is_a_usage_error(args, tmp_path):
    # No "=" in these names: the test would pass for that reason alone.
    nodes = tmp_path / "nodes"
    nodes.write_text("good\n-oProxyCommand\n")
    marker = tmp_path / "ran"
    argv = [str(nodes) if arg == "NODEFILE" else arg for arg in args]
    result = subprocess.run(
        [sys.executable, "-m", "clstr", "--ssh-command", FAKESSH, *argv,
         "-j", "touch %s" % marker],
        cwd=REPO, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clstr: error: "), lines
    assert "-oProxyCommand" in lines[0]
    assert not marker.exists()


# -- failing nodes ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["--multiplex", "--no-multiplex"])
def test_a_node_whose_jobs_fail_gets_one_job_is_retired_and_gets_no_more(cluster, shared_dir,
                                                                           tmp_path, mode):
    # envnode002 logs in fine (its master comes up) but every job there
    # fails.  Jobs elsewhere wait until it has failed once, so it surely
    # receives a job; after that it must receive none.
    failed = os.path.join(shared_dir, "failed")
    joblog = tmp_path / "joblog"
    job = ('if [ "$CLSTR_TEST_NODE" = envnode002 ]; then touch %s; exit 3; fi; '
           'i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; '
           'echo done %%d' % (failed, failed))
    jobs = []
    for n in range(12):
        jobs += ["-j", job % n]
    result = clstr(cluster, mode, "-v", "--joblog", str(joblog),
                   *node_args(cluster.env_nodes(2)), *jobs)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(b"done %d" % n for n in range(12))
    assert retired_lines(result.stderr) == [(b"envnode002", b"job exit 3")]
    rows = joblog_rows(joblog)
    on_broken = [row for row in rows if row[1] == b"envnode002"]
    assert [row[6] for row in on_broken] == [b"3"], rows
    assert all(row[6] == b"0" for row in rows if row[1] == b"envnode001"), rows
    assert len(rows) == 13


@pytest.mark.parametrize("mode", ["--multiplex", "--no-multiplex"])
def test_a_node_that_would_prompt_for_a_password_is_retired_without_prompting(tmp_path, mode):
    # clstr's ssh children have no terminal, so a prompt goes through
    # SSH_ASKPASS; "force" makes ssh use it whatever else holds.  sshd offers
    # password authentication and refuses badkey's key: only BatchMode stops
    # ssh from asking.
    asked = tmp_path / "asked"
    askpass = tmp_path / "askpass"
    askpass.write_text("#!/bin/sh\necho \"$*\" >> %s\necho not-the-password\n" % asked)
    askpass.chmod(0o755)
    env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
               DISPLAY=":0")
    with dedicated_cluster(password_authentication=True) as cluster:
        # Once on each node: badkey001 must be tried (with two jobs in a
        # list, node001 could run both before badkey001's verdict).
        result = clstr(cluster, mode, "-v", "-n", "badkey001", "-n", "node001",
                       "-E", "echo a", env=env)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [b"a"]
    retired = retired_lines(result.stderr)
    assert [name for name, _ in retired] == [b"badkey001"], result.stderr
    assert re.match(rb"auth: .*Permission denied \(publickey,password\)", retired[0][1]), retired
    assert not asked.exists(), asked.read_text()
