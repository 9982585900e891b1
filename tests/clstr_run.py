"""Running clstr from the source tree in tests."""

import os
import random
import re
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Digits of this test run alone, for markers (a sleep duration, a word in a
# job's environment): the pid, at a fixed width so that no run's marker is
# part of another's, and a random part against a reused pid.
RUN_ID = "%07d%04d" % (os.getpid(), random.SystemRandom().randrange(10000))


# Shell code a job runs to set $session to the pid of the sshd process
# serving its session: the first sshd among its ancestors (how many shells
# are in between depends on the wrapper's form and the login shell).
FIND_SESSION_SSHD = (
    "session=$PPID; for i in 1 2 3 4; do "
    "[ \"$(ps -o comm= -p $session)\" = sshd ] && break; "
    "session=$(ps -o ppid= -p $session | tr -d ' '); done; ")


def clstr_argv(cluster, *args):
    return [sys.executable, "-m", "clstr", "--ssh-command", cluster.ssh_command] + list(args)


def clstr(cluster, *args, timeout=120, **kwargs):
    """Run clstr against the loopback cluster; returns the CompletedProcess."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(clstr_argv(cluster, *args), cwd=REPO, capture_output=True,
                          timeout=timeout, **kwargs)


def start_clstr(cluster, *args, **kwargs):
    """Start clstr in the background; the caller waits for it."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(clstr_argv(cluster, *args), cwd=REPO, **kwargs)


def node_args(names):
    args = []
    for name in names:
        args += ["-n", name]
    return args


def wait_until(predicate, timeout=30, interval=0.05, what="the event"):
    """Poll ``predicate`` until it returns something true, and return that;
    fail the test after ``timeout`` seconds.  Tests wait for what they can
    observe (a file, a line, a process) instead of sleeping and hoping."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))
        time.sleep(interval)


def local_processes(marker, whole_word=False):
    """Pids of live processes on this machine (not this one) whose command
    line holds ``marker``: anywhere, or as one argument of its own."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                cmdline = handle.read()
            with open("/proc/%s/stat" % entry, "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        words = cmdline.split(b"\0")
        held = marker.encode() in (words if whole_word else b" ".join(words))
        if held and state != b"Z":
            found.append(int(entry))
    return found


def local_processes_left(marker, timeout=10, whole_word=False):
    """``local_processes(marker)`` once there are none, or after ``timeout``
    seconds: what a stopped job left behind."""
    deadline = time.monotonic() + timeout
    while True:
        found = local_processes(marker, whole_word)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def joblog_rows(path):
    """The records of a joblog (header left out), each a list of 9 byte
    fields; none if the file is not there yet."""
    try:
        with open(path, "rb") as log:
            lines = log.read().splitlines()
    except FileNotFoundError:
        return []
    return [line.split(b"\t", 8) for line in lines[1:]]


def wait_for_file(path):
    """Shell text for a job that waits (at most 60 s) until the file
    ``path`` exists: the test creates it once it has seen what must come
    first."""
    return "i=0; while [ ! -e %s ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; " % path


def retired_lines(stderr):
    """(node, reason) of each "node NAME retired: REASON" clstr said (-v)."""
    return re.findall(rb"node (\S+) retired: (.*)", stderr)


def require_program(name):
    """The path of program ``name``; the test is skipped without it (a
    failure under CI: see ALLOWED_SKIPS in conftest.py)."""
    import pytest
    path = shutil.which(name)
    if path is None:
        pytest.skip("%s is not installed (.ci/deps installs it)" % name)
    return path


def _read_until(stream, done, timeout, wanted):
    """Read the pipe ``stream`` until ``done(data)``, without blocking past
    ``timeout`` seconds; returns what was read, and fails the test (naming
    ``wanted``) at the deadline or at end of output."""
    import select
    data = b""
    deadline = time.monotonic() + timeout
    while not done(data):
        ready, _, _ = select.select([stream], [], [], max(0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError("timed out after %gs waiting for %s, got %r"
                                 % (timeout, wanted, data))
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            raise AssertionError("end of output before %s: %r" % (wanted, data))
        data += chunk
    return data


def read_lines(stream, count, timeout=30):
    """Read ``count`` lines from the pipe ``stream`` (a Popen's stdout);
    returns them (with their newlines) and fails the test if they do not
    come in ``timeout`` seconds."""
    data = _read_until(stream, lambda data: data.count(b"\n") >= count, timeout,
                       "%d lines" % count)
    return data.splitlines(keepends=True)


def read_until(stream, needle, timeout=60):
    """Read the pipe ``stream`` (a running clstr's stderr, say) until
    ``needle`` (bytes) has appeared; returns everything read, so the caller
    can add it to what comes later.  Fails the test at the deadline."""
    return _read_until(stream, lambda data: needle in data, timeout, repr(needle))


def read_terminal(master):
    """Everything written to a pseudo-terminal until every holder of its
    other end has gone (EIO), then close ``master``."""
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every holder of the terminal has gone
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    return drawn


def all_jobs(feed):
    """Every job a JobFeed holds, its sources read to their end."""
    feed.read_everything()
    jobs = []
    while True:
        job = feed.take()
        if job is None:
            return jobs
        jobs.append(job)
