"""Long lines over the real loopback sshd: a line of any length arrives
whole, byte for byte, while clstr's memory stays bounded; a carriage return
ends a line, so a progress bar shows as it is drawn."""

import hashlib
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

from clstr_run import REPO, clstr, clstr_argv, node_args, start_clstr

LINE = 50 * 1000 * 1000
# clstr holding a 50 MB line in memory peaks above 110 MB; streaming whole
# lines it needs under 20 MB.
RSS_LIMIT_KIB = 60 * 1024


def line_job(letter):
    """A job printing one line of LINE ``letter``s and no newline."""
    return "head -c %d /dev/zero | tr '\\0' %s" % (LINE, letter)


# Runs the command in argv[2:] and writes its peak RSS (KiB) to argv[1].  A
# process's peak counts the memory of the process that forked it until it
# called exec, so clstr is measured from this small parent, not from pytest.
MEASURE = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as report:
    report.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run_measured(cluster, tmp_path, *args):
    """Run clstr with stdout and stderr to files; returns (exit code, peak
    RSS of clstr and its children in KiB, stdout path, stderr bytes)."""
    out_path, err_path, rss_path = tmp_path / "out", tmp_path / "err", tmp_path / "rss"
    argv = [sys.executable, "-c", MEASURE, str(rss_path)] + clstr_argv(cluster, *args)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)
    try:
        code = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return code, int(rss_path.read_text()), out_path, err_path.read_bytes()


def sha256_of_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def runs_of_bytes(path):
    """The file as [byte, count] runs, read a block at a time."""
    runs = []
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            while block:
                byte = block[:1]
                rest = block.lstrip(byte)
                if runs and runs[-1][0] == byte:
                    runs[-1][1] += len(block) - len(rest)
                else:
                    runs.append([byte, len(block) - len(rest)])
                block = rest
    return runs


@pytest.mark.parametrize("mode", [[], ["--tag"], ["--group", "--tag"]],
                         ids=["lines", "tag", "group-tag"])
def test_a_50_mb_line_without_newline_arrives_whole_in_bounded_memory(cluster, tmp_path, mode):
    code, rss, out, err = run_measured(cluster, tmp_path, *mode, "-n", "node001",
                                       "-j", line_job("x"))
    assert code == 0, err
    expected = hashlib.sha256(b"node001: " if "--tag" in mode else b"")
    block = b"x" * (1 << 20)
    for _ in range(LINE // len(block)):
        expected.update(block)
    expected.update(block[:LINE % len(block)])
    assert sha256_of_file(out) == expected.hexdigest()
    assert rss < RSS_LIMIT_KIB, "clstr peaked at %d MiB" % (rss // 1024)


def test_four_50_mb_lines_at_once_stay_whole_and_memory_stays_bounded(cluster, tmp_path):
    letters = "abcd"
    jobs = []
    for letter in letters:
        jobs += ["-j", line_job(letter)]
    code, rss, out, err = run_measured(cluster, tmp_path, *node_args(cluster.nodes(4)), *jobs)
    assert code == 0, err
    runs = runs_of_bytes(out)
    # Each line whole, a newline between lines (they have none of their own).
    if runs[-1][0] == b"\n":
        runs.pop()
    assert [count for _, count in runs] == [LINE, 1] * 3 + [LINE], runs
    assert sorted(byte for byte, _ in runs[0::2]) == [letter.encode() for letter in letters]
    assert all(byte == b"\n" for byte, _ in runs[1::2])
    assert rss < RSS_LIMIT_KIB, "clstr peaked at %d MiB" % (rss // 1024)


def read_until(stream, wanted, timeout=30):
    """Read ``stream`` until ``wanted`` has arrived; returns all read."""
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while wanted not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                break
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    return data


def test_a_progress_bar_shows_while_the_job_runs_and_keeps_its_tag(cluster, shared_dir):
    flag = os.path.join(shared_dir, "go")
    # The job waits (bounded) for the test to have seen its first step.
    job = ("printf 'step 1\\r'; sleep 0.2; printf 'step 2\\r'; i=0; "
           "while [ ! -e %s ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo done"
           % flag)
    proc = start_clstr(cluster, "--tag", "-n", "node001", "-j", job)
    try:
        early = read_until(proc.stdout, b"node001: step 1\r")
        open(flag, "w").close()
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert early.startswith(b"node001: step 1\r"), early
    assert early + rest == b"node001: step 1\rnode001: step 2\rnode001: done\n"
    assert proc.returncode == 0, err


def test_cr_lf_keeps_one_tag_and_a_lone_cr_gets_its_own(cluster):
    # The pauses make "\r" and "\n" likely to arrive in separate reads.
    job = ("printf 'one\\r\\ntwo\\r\\n'; printf 'progress\\r'; sleep 0.2; printf '\\nend\\r'; "
           "sleep 0.2; printf 'last\\n'")
    result = clstr(cluster, "--tag", "-n", "node001", "-j", job)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (b"node001: one\r\nnode001: two\r\nnode001: progress\r\n"
                             b"node001: end\rnode001: last\n")
