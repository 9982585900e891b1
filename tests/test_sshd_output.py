"""Output that users can trust, over the real loopback sshd: every mode
delivers exact bytes, lines never interleave, failed attempts are never
duplicated, and a slow reader keeps clstr's memory bounded."""

import hashlib
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from clstr_run import FIND_SESSION_SSHD, REPO, RUN_ID, clstr, clstr_argv, node_args, require_program

MODES = [[], ["--tag"], ["--group"]]


def payload_job(seed, size):
    """A job printing ``size`` pseudo-random bytes (NULs and invalid UTF-8
    included), the same for the same seed, and a command to compute them."""
    return "head -c %d /dev/zero | openssl enc -aes-128-ctr -nosalt -pass pass:%d 2>/dev/null" % (
        size, seed)


def expected_payload(seed, size):
    return subprocess.run(["sh", "-c", payload_job(seed, size)], capture_output=True,
                          check=True, timeout=60).stdout


@pytest.mark.parametrize("mode", MODES, ids=["lines", "tag", "group"])
def test_binary_output_arrives_byte_for_byte(cluster, mode):
    require_program("openssl")  # makes the test data
    data = expected_payload(1, 300000)
    assert b"\0" in data
    result = clstr(cluster, *mode, "-n", "node001", "-j", payload_job(1, 300000))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    if mode == ["--tag"]:
        # Every line (ended by "\n", "\r\n" or a lone "\r") starts with the
        # tag; removing it gives the bytes back.
        assert out.startswith(b"node001: ")
        out = out[len(b"node001: "):].replace(b"\nnode001: ", b"\n").replace(b"\rnode001: ", b"\r")
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("mode", MODES, ids=["lines", "tag", "group"])
def test_a_10_mb_line_without_newline_passes_intact(cluster, mode):
    job = "head -c 10000000 /dev/zero | tr '\\0' x"
    result = clstr(cluster, *mode, "-n", "node001", "-n", "node002", "-j", job, "-j", job)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split(b"\n")
    prefix = b"node00\\d: " if mode == ["--tag"] else b""
    body = [re.sub(b"^" + prefix, b"", line) for line in lines if line]
    assert body == [b"x" * 10000000] * 2


@pytest.mark.parametrize("mode", MODES, ids=["lines", "tag", "group"])
def test_lines_of_32_chatty_jobs_never_interleave(cluster, mode):
    job = ("i=0; while [ $i -lt 200 ]; do printf '%%s\\n' %s; i=$((i+1)); done")
    jobs = []
    for n in range(32):
        letter = "abcdefghijklmnopqrstuvwxyzABCDEF"[n]
        jobs += ["-j", job % (letter * 3000)]
    result = clstr(cluster, *mode, *node_args(cluster.nodes(32)), *jobs)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 32 * 200
    for line in lines:
        text = re.sub(rb"^node\d{3}: ", b"", line) if mode == ["--tag"] else line
        assert len(text) == 3000 and text == text[:1] * 3000, line[:80]


def test_group_keeps_each_jobs_output_together(cluster):
    job = "for i in 1 2 3 4 5; do echo %s $i; sleep 0.05; done"
    jobs = []
    for name in ("alpha", "beta", "gamma", "delta"):
        jobs += ["-j", job % name]
    result = clstr(cluster, "--group", *node_args(cluster.nodes(4)), *jobs)
    assert result.returncode == 0, result.stderr
    words = [line.split()[0] for line in result.stdout.splitlines()]
    runs = [word for i, word in enumerate(words) if i == 0 or words[i - 1] != word]
    assert sorted(runs) == [b"alpha", b"beta", b"delta", b"gamma"]


def test_tag_prefixes_every_line_with_the_node(cluster):
    result = clstr(cluster, "--tag", *node_args(cluster.nodes(5)), "-E", "echo one; echo two")
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert lines == sorted(b"node%03d: %s" % (n, word)
                           for n in range(1, 6) for word in (b"one", b"two"))


def test_group_prints_a_job_once_when_its_first_node_dies_mid_job(cluster, shared_dir):
    flag = os.path.join(shared_dir, "died")
    # The first attempt prints, then kills its own ssh session: the node
    # "dies" mid-job, and the job reruns elsewhere.
    job = ("echo partial output; if [ ! -e {f} ]; then touch {f}; " + FIND_SESSION_SSHD
           + "kill -9 $session; sleep 5; fi; echo complete output").format(f=flag)
    result = clstr(cluster, "--group", "--no-multiplex", *node_args(cluster.nodes(2)),
                   "-j", job)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"partial output\ncomplete output\n"


def test_output_dir_holds_complete_files_only_and_an_index(cluster, shared_dir, tmp_path):
    flag = os.path.join(shared_dir, "failed")
    first_fails = "echo attempt; if [ ! -e {f} ]; then touch {f}; exit 4; fi; echo done".format(
        f=flag)
    out = tmp_path / "out"
    result = clstr(cluster, "--output-dir", str(out), *node_args(cluster.nodes(3)),
                   "-j", first_fails, "-j", "echo to stderr >&2; printf 'no newline'")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert sorted(os.listdir(out)) == ["1.err", "1.out", "2.err", "2.out", "index.tsv"]
    assert (out / "1.out").read_bytes() == b"attempt\ndone\n"
    assert (out / "2.out").read_bytes() == b"no newline"
    assert (out / "2.err").read_bytes() == b"to stderr\n"
    index = (out / "index.tsv").read_text().splitlines()
    assert index[0] == "seq\tstatus\thost\tcommand"
    rows = sorted(line.split("\t") for line in index[1:])
    assert [row[0] for row in rows] == ["1", "2"] and all(row[1] == "0" for row in rows)
    assert rows[0][3] == first_fails


def _peak_rss_kb(pid, stop, peaks):
    deadline = time.monotonic() + 300
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with open("/proc/%d/status" % pid) as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        peaks.append(int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.05)


def test_slow_reader_gets_exact_bytes_while_memory_stays_bounded(cluster):
    # 16 jobs x 8 MB into a reader taking about 20 MB/s.
    size = 8 * 1000 * 1000
    job = "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c %d" % size
    argv = clstr_argv(cluster, *node_args(cluster.nodes(16)), *(["-j", job] * 16))
    process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stop, peaks = threading.Event(), []
    watcher = threading.Thread(target=_peak_rss_kb, args=(process.pid, stop, peaks))
    watcher.start()
    received = 0
    started = time.monotonic()
    try:
        while True:
            chunk = process.stdout.read1(65536)
            if not chunk:
                break
            received += len(chunk)
            ahead = received / 20e6 - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        process.wait(timeout=120)
    finally:
        stop.set()
        watcher.join()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stderr.read()
    # Each job's last line is cut short by head -c, so clstr adds a newline
    # between jobs (never gluing lines together): at most one per job.
    assert size * 16 <= received <= size * 16 + 16
    assert peaks and max(peaks) < 60 * 1024, max(peaks)


def test_closed_stdout_stops_the_run_cleanly(cluster):
    marker = "clstr-head-" + RUN_ID
    script = ('"$0" -m clstr --ssh-command "$1" -n node001 -n node002 '
              '-j "CLSTR_TEST_MARK=$2 yes line" -j "CLSTR_TEST_MARK=$2 yes line" '
              '-j "CLSTR_TEST_MARK=$2 sleep 60" | head -1; '
              'echo "status=${PIPESTATUS[0]}"')
    result = subprocess.run(["bash", "-c", script, sys.executable, cluster.ssh_command, marker],
                            cwd=REPO, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.stdout.splitlines() == [b"line", b"status=141"]
    assert b"Traceback" not in result.stderr
    assert cluster.remote_processes_left(marker) == []
