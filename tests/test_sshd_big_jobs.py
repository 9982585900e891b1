"""Job size is not a node's fault (issue 18, item 6): a job line of 1 MiB or
16 MiB, far above what one argument (128 KiB) or one mux message (256 KiB)
can carry, runs on every transport beside small jobs, and no node is
retired for it; messages show only the command's first 200 bytes."""

import os
import subprocess
import sys

import pytest

from clstr_run import REPO, clstr, joblog_rows, start_clstr, wait_until

NODES = ["-n", "node00[1-4]"]
SIZES = {"1MiB": 1 << 20, "16MiB": 16 << 20}
TRANSPORTS = {"mux": [], "no-multiplex": ["--no-multiplex"],
              "exec": ["--exec", "env CLSTR_NODE={host}"]}
# A report or -v line: "  job N '<200 bytes> [cut: ...]': host: why".
LONGEST_LINE = 400


def big_job(size, then):
    """A job line of at least ``size`` bytes that runs ``then``."""
    return b": " + b"A" * size + b"; " + then


def write_jobs(tmp_path, size):
    """A job file: 20 small jobs, with a big one that succeeds and a big one
    that fails among them; returns its path."""
    lines = [b"echo small-%d" % n for n in range(20)]
    lines.insert(3, big_job(size, b"echo big"))
    lines.insert(12, big_job(size, b"echo big-fails; exit 3"))
    path = tmp_path / "jobs"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def run(cluster, transport, *args):
    if transport == "exec":
        argv = [sys.executable, "-m", "clstr"] + list(args)
        return subprocess.run(argv, cwd=REPO, capture_output=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    return clstr(cluster, *args, timeout=300)


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_a_big_job_runs_once_beside_small_ones_and_retires_no_node(cluster, tmp_path, transport,
                                                                   size):
    log = tmp_path / "joblog"
    result = run(cluster, transport, *TRANSPORTS[transport], "-v", "--job-failure", "job",
                 "--joblog", str(log), *NODES, "-J", write_jobs(tmp_path, SIZES[size]))
    assert result.returncode == 1, result.stderr[:2000]
    expected = sorted([b"big", b"big-fails"] + [b"small-%d" % n for n in range(20)])
    assert sorted(result.stdout.splitlines()) == expected, result.stderr[:2000]
    assert b"retired" not in result.stderr, result.stderr[:2000]
    rows = joblog_rows(str(log))
    assert sorted(int(row[0]) for row in rows) == list(range(1, 23))
    # Only the failing big job failed, and said so in lines of bounded size.
    lines = result.stderr.splitlines()
    assert all(len(line) < LONGEST_LINE for line in lines), [len(line) for line in lines]
    [failed] = [line for line in lines if line.startswith(b"clstr:   job 13 ")]
    assert failed.startswith(b"clstr:   job 13 ': AAAA")
    assert b"[cut: %d bytes in all]" % (SIZES[size] + 26) in failed
    assert failed.endswith(b"job exit 3"), failed


def test_the_active_nodes_file_shows_a_big_job_cut(cluster, tmp_path, shared_dir):
    active = tmp_path / "active"
    flag = os.path.join(shared_dir, "go-%d" % os.getpid()).encode()
    wait = b"i=0; while [ ! -e %s ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done" % flag
    jobs = tmp_path / "jobs"
    jobs.write_bytes(big_job(1 << 20, wait) + b"\n")
    proc = start_clstr(cluster, "-A", str(active), "-n", "node001", "-J", str(jobs))
    try:
        shown = wait_until(lambda: active.exists() and b"AAAA" in active.read_bytes()
                           and active.read_bytes(), timeout=60, what="the job in -A")
        open(flag, "w").close()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[:2000]
    assert len(shown) < LONGEST_LINE, len(shown)
    assert b"[cut: " in shown, shown


def test_a_job_the_node_cannot_store_fails_alone_with_one_line(tmp_path):
    # mktemp fails where $TMPDIR does not exist: the wrapper cannot store
    # the job's command, says so, and the node goes on with the small jobs.
    jobs = tmp_path / "jobs"
    jobs.write_bytes(b"\n".join([big_job(1 << 20, b"echo big")]
                                + [b"echo small-%d" % n for n in range(6)]) + b"\n")
    missing = str(tmp_path / ("missing-%d" % os.getpid()))
    result = run(None, "exec", "--exec", "env TMPDIR=%s CLSTR_NODE={host}" % missing,
                 "-v", "-n", "c1", "-J", str(jobs))
    assert result.returncode == 1, result.stderr[:2000]
    assert sorted(result.stdout.splitlines()) == [b"small-%d" % n for n in range(6)]
    assert b"retired" not in result.stderr, result.stderr[:2000]
    said = [line for line in result.stderr.splitlines() if line.startswith(b"clstr:   job 1 ")]
    assert said and said[0].endswith(
        b"c1: not delivered: the node stored 0 of %d bytes of the command" % ((1 << 20) + 12)), \
        said
