"""This machine's limits are never a node's fault: with few open files
(``ulimit -n``) or processes (``ulimit -u``), clstr runs fewer jobs at once,
says so once, runs every job exactly once and retires no node; when nothing
at all can start, it gives up after a while with one line.

clstr runs as a user of its own (cluster.LOCAL_USER): the process limit
counts every process of the user, the remote sessions too if clstr ran as
the login user, and does not bind root.  The limit is set in the child only.
"""

import fcntl
import os
import pwd
import re
import resource
import signal
import subprocess
import sys
import time

import pytest

from clstr_run import REPO, RUN_ID

LIMITS = {"n": resource.RLIMIT_NOFILE, "u": resource.RLIMIT_NPROC}
LIMIT_NAMES = {"n": "open-files", "u": "process"}


# One user runs clstr for every test run on this machine, and its process
# limit counts all of that user's processes: two test runs at once would
# share the limit and kill each other's clstr when they clean up.  So the
# runs take turns, by a lock every run opens at the same path.
TURN_LOCK = "/tmp/clstr-test-local-user.lock"


@pytest.fixture(scope="module")
def local_client(cluster):
    client = cluster.local_client()
    if client is None:
        pytest.skip("running clstr as another user needs root")
    fd = os.open(TURN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield client
    finally:
        os.close(fd)


def _user_processes(uid):
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat("/proc/" + entry).st_uid == uid:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _kill_user_processes(uid):
    """Masters a run left (they exit by themselves after 10 idle seconds)
    would count against the next run's process limit."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in _user_processes(uid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while _user_processes(uid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _python_for_others():
    """A Python another user may run (ours may live in root's home, or be a
    virtual environment's link to it)."""
    path = os.path.realpath(sys.executable)
    while os.path.dirname(path) != path:
        if not os.stat(path).st_mode & 0o001:
            return "/usr/bin/python3"
        path = os.path.dirname(path)
    return sys.executable


def run_limited(local_client, which, limit, *args, stdin=b"", timeout=150):
    """Run clstr as the local user with ``ulimit -<which> <limit>``."""
    user, ssh_config = local_client
    entry = pwd.getpwnam(user)
    _kill_user_processes(entry.pw_uid)

    def become_user_and_limit():
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        resource.setrlimit(LIMITS[which], (limit, limit))

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": entry.pw_dir,
           "USER": user, "LOGNAME": user, "LANG": "C.UTF-8"}
    argv = [_python_for_others(), "-m", "clstr", "--ssh-command", "ssh -F " + ssh_config]
    argv += args
    try:
        return subprocess.run(argv, cwd=REPO, input=stdin, capture_output=True, env=env,
                              preexec_fn=become_user_and_limit, timeout=timeout)
    finally:
        _kill_user_processes(entry.pw_uid)


# (limit, its value, hosts, mode): both limits, both transports, few and
# many hosts, the issue's own case (-n 64, 300 jobs over 100 hosts) among
# them.  Each host is the loopback sshd (cluster.nodes).
CASES = [
    ("n", 32, 100, "--multiplex"),
    ("n", 64, 100, "--multiplex"),
    ("n", 64, 300, "--no-multiplex"),
    ("n", 128, 300, "--multiplex"),
    ("u", 3, 8, "--multiplex"),
    ("u", 5, 8, "--no-multiplex"),
    ("u", 5, 100, "--multiplex"),
    ("u", 3, 300, "--no-multiplex"),
]


@pytest.mark.parametrize("which,limit,hosts,mode", CASES,
                         ids=["ulimit-%s-%d-%d-hosts%s" % (w, v, h, m[1:]) for w, v, h, m in CASES])
def test_a_local_limit_runs_fewer_jobs_at_once_every_job_once_no_node_retired(
        cluster, local_client, shared_dir, which, limit, hosts, mode):
    # The 300 jobs where each costs a session, fewer where each costs
    # a whole ssh login (and where few run at once).
    count = 300 if which == "n" and mode == "--multiplex" else 60
    ran = os.path.join(shared_dir, "ran")
    marker = "%s-%s%d" % (RUN_ID, which, limit)
    jobs = "".join("echo %s %d; echo %d >> %s\n" % (marker, n, n, ran) for n in range(count))
    logins_before = len(cluster.accepted_logins())
    result = run_limited(local_client, which, limit, mode, "-v", "-n", "node[001-%03d]" % hosts,
                         "-J", "-", stdin=jobs.encode())
    logins = len(cluster.accepted_logins()) - logins_before
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "retired" not in stderr, stderr
    # Every job exactly once: as it ran on the node, and in clstr's output.
    with open(ran) as runs:
        assert sorted(int(line) for line in runs) == list(range(count)), stderr
    assert sorted(result.stdout.decode().splitlines()) == sorted(
        "%s %d" % (marker, n) for n in range(count))
    said = re.findall(r"clstr: only (\d+) of %d slots can run at once: the %s limit is %d "
                      r"\(raise it with ulimit -%s\)" % (hosts, LIMIT_NAMES[which], limit, which),
                      stderr)
    assert len(said) == 1 and 0 < int(said[0]) < hosts, stderr
    assert stderr.count("slots can run at once") == 1, stderr
    if which == "n" and mode == "--multiplex":
        # Masters only for the jobs that can run at once: one per host would
        # cost connections (and fds, for their login-shell probes) in vain.
        assert logins <= int(said[0]), (logins, stderr)


def test_nothing_can_start_gives_up_with_one_line_and_no_node_retired(local_client):
    # One process: clstr itself.  Nothing it starts can ever run (neither a
    # master nor, once masters are given up, an ssh of a job's own).
    result = run_limited(local_client, "u", 1, "-v", "-n", "node[001-008]",
                         "-j", "echo never")
    assert result.returncode == 1, result.stderr
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        "clstr: nothing could start for 30s: the process limit is 1 (raise it with ulimit -u)"]


def test_gathered_outputs_waiting_in_files_fit_the_open_files_limit(cluster, local_client):
    # Each node's 100 KB answers (stdout and stderr) wait in temporary
    # files of their own until its job ends: two fds more per running job,
    # counted when clstr fits the run to the limit (else the files could
    # not be opened: exit 3).
    job = "head -c 100000 /dev/zero | tr '\\0' x | tee /dev/stderr; echo"
    result = run_limited(local_client, "n", 64, "-n", "node[001-030]", "--gather", "-E", job)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    said, gathered = stderr.split("\n", 1)
    assert re.match(r"clstr: only \d+ of 30 slots can run at once: the open-files limit is 64",
                    said)
    rule = "-" * 15
    assert result.stdout.decode() == "%s\nnode[001-030] (30)\n%s\n%s\n" % (rule, rule, "x" * 100000)
    assert gathered == "%s\nnode[001-030] (30) stderr\n%s\n" % (rule, rule) + "x" * 100000
