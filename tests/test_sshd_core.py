"""The core behaviours over the real ssh client and a real loopback sshd."""

import fcntl
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

import pytest

from clstr_run import REPO, RUN_ID, clstr, node_args, read_terminal, start_clstr, wait_until


def test_three_jobs_on_two_nodes_print_every_line(cluster):
    result = clstr(cluster, *node_args(cluster.nodes(2)),
                   "--job", 'echo "Hello, world."', "--job", 'echo "Hello again."',
                   "--job", 'echo "What do you want?"')
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        b"Hello again.", b"Hello, world.", b"What do you want?"]


def test_job_file_and_node_file(cluster, tmp_path):
    nodes = tmp_path / "nodes.txt"
    nodes.write_text("\n".join(cluster.nodes(2)) + "\n\n")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text('echo "Hello, world."\necho "Hello again."\r\n\necho "What do you want?"\n')
    result = clstr(cluster, "--node-file", str(nodes), "--job-file", str(jobs))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        b"Hello again.", b"Hello, world.", b"What do you want?"]


def test_jobs_generated_by_process_substitution(cluster):
    script = ('exec "$0" -m clstr --ssh-command "$1" -n node001 -n node002 '
              '--job-file <(for i in $(seq 10); do echo "echo I am job $i"; done)')
    result = subprocess.run(["bash", "-c", script, sys.executable, cluster.ssh_command],
                            cwd=REPO, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(
        b"I am job %d" % i for i in range(1, 11))


def test_on_each_node_runs_once_per_node(cluster):
    names = cluster.nodes(60)
    result = clstr(cluster, *node_args(names + names[:5]), "-E", "echo ran")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [b"ran"] * 60


def test_n_slash_host_runs_n_jobs_at_once_on_that_host(cluster, shared_dir):
    # Eight jobs that wait for the test on 4/envnode001 and 1/envnode002: five
    # start (four on node001), and no more until the test lets them go.
    go = os.path.join(shared_dir, "go")
    job = ('echo "$CLSTR_TEST_NODE" > %s/started.%%d; i=0; '
           'while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; '
           'echo done %%d' % (shared_dir, go))
    jobs = []
    for i in range(8):
        jobs += ["-j", job % (i, i)]

    def started():
        return sorted(name for name in os.listdir(shared_dir) if name.startswith("started."))

    process = start_clstr(cluster, "-n", "4/envnode001", "1/envnode002", *jobs)
    try:
        wait_until(lambda: len(started()) == 5, what="five jobs started")
        hosts = []
        for name in started():
            with open(os.path.join(shared_dir, name)) as handle:
                hosts.append(handle.read().strip())
        assert sorted(hosts) == ["envnode001"] * 4 + ["envnode002"]
        open(go, "w").close()
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert sorted(out.splitlines()) == sorted(b"done %d" % i for i in range(8))
    assert len(started()) == 8


def test_on_each_node_runs_once_per_host_whatever_its_slots(cluster):
    result = clstr(cluster, "-n", "4/node001", "2/node002,3/node003", "-E", "echo ran")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [b"ran"] * 3


def test_400_jobs_over_16_slots_each_complete_exactly_once(cluster, tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join("echo job %d\n" % i for i in range(400)))
    result = clstr(cluster, *node_args(cluster.nodes(8) * 2), "-J", str(jobs))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(b"job %d" % i for i in range(400))


@pytest.mark.parametrize("mode", ["--no-multiplex", "--multiplex"])
def test_refused_node_is_retired_and_its_job_reruns_elsewhere(cluster, mode):
    # Refusal is immediate, never a wait for the connect timeout: that would
    # outlast clstr()'s 120 s.
    result = clstr(cluster, mode, "-v", "--connect-timeout", "600",
                   "-n", cluster.dead_nodes(1)[0], "-n", cluster.nodes(1)[0],
                   "-j", "echo one", "-j", "echo two", "-j", "echo three")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"one", b"three", b"two"]
    assert result.stderr.count(b"node dead001 retired: refused") == 1, result.stderr


def test_job_exiting_non_zero_retires_its_node_and_reruns_elsewhere(cluster, shared_dir):
    flag = os.path.join(shared_dir, "flag")
    job = "if [ -e %s ]; then echo second try; else touch %s; exit 3; fi" % (flag, flag)
    result = clstr(cluster, "-v", *node_args(cluster.nodes(2)), "-j", job)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"second try\n"
    assert re.search(rb"node node00[12] retired: job exit 3", result.stderr), result.stderr


def test_a_failed_job_waits_behind_the_others_so_they_still_run(cluster, shared_dir):
    # The case: the failing job retires node001; 'long' holds
    # node002 until then.  Behind 'short' in the queue, the failing job
    # cannot take node002 (and retire it) before 'short' runs there.
    failed = os.path.join(shared_dir, "failed")
    result = clstr(cluster, "-v", *node_args(cluster.nodes(2)),
                   "-j", "touch %s; exit 3" % failed,
                   "-j", "i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.05; "
                         "i=$((i+1)); done; echo long" % failed,
                   "-j", "echo short")
    assert result.returncode == 1, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"long", b"short"], result.stderr
    assert b"1 of 3 jobs were not completed" in result.stderr


def test_one_job_failing_everywhere_cannot_keep_200_others_from_running(cluster, tmp_path):
    # Default options (--max-attempts 0): the bad job retires a node each
    # time it runs, but it runs only after every job read before its retry.
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("exit 3\n" + "".join("echo job %d\n" % i for i in range(200)))
    result = clstr(cluster, *node_args(cluster.nodes(20)), "-J", str(jobs))
    assert result.returncode == 1, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(b"job %d" % i for i in range(200))
    assert b"1 of 201 jobs were not completed" in result.stderr


def test_a_job_refusing_busy_nodes_still_finds_an_idle_one(cluster):
    # Node filtering: the job refuses envnode001..003 (as if busy) and is
    # tried on node after node until envnode004 takes it.
    job = 'case "$CLSTR_TEST_NODE" in envnode00[123]) exit 1;; esac; echo "ran on $CLSTR_TEST_NODE"'
    result = clstr(cluster, *node_args(cluster.env_nodes(4)), "-j", job, "-j", "echo other")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"other", b"ran on envnode004"]


def test_the_longest_alive_interval_is_one_ssh_accepts(cluster):
    # 1000000 once became ServerAliveInterval=1e+06, which ssh refuses.
    result = clstr(cluster, "--alive-interval", "1000000", "--connect-timeout", "1000000",
                   "-n", "node001", "-j", "echo ok")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok\n"


@pytest.mark.parametrize("mode", ["--multiplex", "--no-multiplex"])
def test_addresses_in_brackets_reach_ssh_without_them(cluster, tmp_path, mode):
    # ssh is given the bare address: a config block for the bare names
    # (pointing at the loopback sshd) is what makes the jobs run.
    config = open(cluster.ssh_config).read()
    node_block = config.split("Host ", 2)[1]
    assert node_block.startswith("node*")
    own = tmp_path / "ssh_config"
    own.write_text(config + "Host ::1 fe80::1%eth0" + node_block[len("node*"):])
    result = clstr(cluster, mode, "--ssh-command", "ssh -F %s" % own, "--tag",
                   "-n", "[::1]", "-n", "%s@[::1]" % cluster.user, "-n", "[fe80::1%eth0]",
                   *(["-j", "echo ok"] * 6))
    assert result.returncode == 0, result.stderr
    tags = {line.split(b": ")[0] for line in result.stdout.splitlines()}
    assert len(result.stdout.splitlines()) == 6
    assert tags <= {b"::1", b"%s@::1" % cluster.user.encode(), b"fe80::1%eth0"}, tags


def test_all_nodes_dead_exits_1_and_counts_jobs_not_completed(cluster):
    result = clstr(cluster, "-v", *node_args(cluster.dead_nodes(3)),
                   "-j", "echo a", "-j", "echo b")
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"2 of 2 jobs were not completed" in result.stderr


def test_status_without_a_terminal_prints_no_status_and_succeeds(cluster):
    result = clstr(cluster, "--status", *node_args(cluster.nodes(2)), "-j", "echo x")
    assert result.returncode == 0
    assert result.stdout == b"x\n"
    assert b"jobs complete" not in result.stderr


def test_status_on_a_terminal_is_throttled_fits_the_width_and_ends_with_a_summary(cluster):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "clstr", "--ssh-command", cluster.ssh_command, "--status",
         *node_args(cluster.nodes(4)), *(["-j", "sleep 0.1; echo x"] * 40)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    drawn = read_terminal(master)
    elapsed = time.monotonic() - started
    assert process.wait(timeout=60) == 0
    assert process.stdout.read() == b"x\n" * 40
    # Each redraw clears the line and writes the new state.
    frames = [frame for frame in drawn.split(b"\r\x1b[2K") if frame]
    assert frames, drawn
    assert len(frames) <= 10 * elapsed + 3, (len(frames), elapsed)
    assert all(len(frame.rstrip(b"\r\n")) <= 59 for frame in frames), frames
    assert frames[-1].startswith(b"40 of 40 jobs complete") and frames[-1].endswith(b"\n")


def test_stdout_and_stderr_are_kept_apart_and_whole(cluster):
    job = "for i in 1 2 3; do echo out$i; echo err$i >&2; done"
    result = clstr(cluster, *node_args(cluster.nodes(4)), *(["-j", job] * 8))
    assert result.returncode == 0
    assert sorted(result.stdout.splitlines()) == sorted([b"out1", b"out2", b"out3"] * 8)
    assert sorted(result.stderr.splitlines()) == sorted([b"err1", b"err2", b"err3"] * 8)


def test_active_nodes_file_is_always_complete(cluster, tmp_path):
    active = tmp_path / "active"
    seen = []
    stop = threading.Event()

    def watch():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                seen.append(active.read_bytes())
            except FileNotFoundError:
                pass
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = clstr(cluster, "-A", str(active), *node_args(cluster.nodes(6)),
                       *(["-j", "sleep 0.2; echo done"] * 18))
    finally:
        stop.set()
        watcher.join()
    assert result.returncode == 0, result.stderr
    line = re.compile(rb"^node\d{3}: <'Job' 'sleep 0.2; echo done'>$")
    busy = [snapshot for snapshot in seen if snapshot]
    assert busy, "the file never listed a running job"
    for snapshot in busy:
        assert snapshot.endswith(b"\n")
        assert all(line.match(entry) for entry in snapshot.splitlines()), snapshot
    assert active.read_bytes() == b""


@pytest.mark.parametrize("mode", ["--no-multiplex", "--multiplex"])
def test_control_persist_in_ssh_config_does_not_hold_up_the_run(cluster, mode):
    # A user's ~/.ssh/config with ControlMaster auto + ControlPersist: the
    # background master inherits ssh's stderr and holds it for minutes; a job
    # must still count as finished when its ssh exits.
    control = tempfile.mkdtemp(prefix="cm-", dir="/tmp")
    config = os.path.join(control, "config")
    with open(config, "w") as handle:
        handle.write("Host *\n    ControlMaster auto\n    ControlPersist 120\n"
                     "    ControlPath %s/%%C\n" % control)
        handle.write(open(cluster.ssh_config).read())
    try:
        result = subprocess.run(
            [sys.executable, "-m", "clstr", "--ssh-command", "ssh -F %s" % config, mode,
             "-n", "node001", "-j", "echo first", "-j", "echo second"],
            cwd=REPO, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        for name in os.listdir(control):
            if name != "config":
                subprocess.run(["ssh", "-F", config, "-o", "ControlPath=%s/%s" % (control, name),
                                "-O", "exit", "node001"], capture_output=True, timeout=10)
        shutil.rmtree(control, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [b"first", b"second"]


def test_interrupt_stops_remote_jobs_and_exits_130(cluster):
    marker = "clstr-marker-" + RUN_ID
    argv = [sys.executable, "-m", "clstr", "--ssh-command", cluster.ssh_command,
            *node_args(cluster.nodes(3)),
            *(["-j", "export CLSTR_TEST_MARK=%s; "
                      "sh -c \"sleep 300; : $CLSTR_TEST_MARK-child\" & sleep 300" % marker] * 3)]
    process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # "-child" is spelled out only in each job's inner sh (which cannot
        # exec sleep: a command follows); everything the jobs started has
        # the marker in its environment.
        wait_until(lambda: len(cluster.remote_processes(marker + "-child")) == 3,
                   what="all three jobs running")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 130
        assert cluster.remote_processes_left(marker) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("payload", [b"\x00\xff\xfe binary\n", b"no newline at end"])
def test_output_bytes_pass_through_unchanged(cluster, payload):
    job = "printf '%s'" % "".join("\\%03o" % byte for byte in payload)
    result = clstr(cluster, "-n", "node001", "-j", job)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
