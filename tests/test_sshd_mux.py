"""Jobs through clstr's own mux client over real masters and the real sshd
(issue 12): the same bytes, statuses and stops as through the ssh client."""

import os
import signal
import subprocess
import sys

import pytest

from clstr_run import (
    REPO,
    RUN_ID,
    clstr,
    clstr_argv,
    joblog_rows,
    node_args,
    read_lines,
    start_clstr,
    wait_until,
)

# Every byte value on both streams, a non-zero status, and stdin at EOF
# (cat returns at once: the job's stdin is /dev/null under the wrapper).
JOBS = [
    "printf 'out %s\\n' 1 2 3; printf 'err\\n' >&2",
    "head -c 300000 /dev/urandom | od -An -tx1 | head -c 200000; echo",
    "awk 'BEGIN { for (i = 0; i < 256; i++) printf \"%c\", i }' | od -c | tail -3",
    "cat; echo read-eof",
    "echo before; exit 3",
]


def _run_modes(cluster, *args):
    results = {}
    for mode in ("--multiplex", "--no-multiplex"):
        results[mode] = clstr(cluster, mode, "--group", "--job-failure", "job",
                              "-n", "node001", *args)
    return results


def test_status_bytes_and_stdin_eof_match_the_ssh_client(cluster):
    args = [arg for job in JOBS[:1] + JOBS[2:] for arg in ("-j", job)]
    results = _run_modes(cluster, *args)
    mux, ssh = results["--multiplex"], results["--no-multiplex"]
    assert mux.returncode == ssh.returncode == 1
    assert sorted(mux.stdout.splitlines()) == sorted(ssh.stdout.splitlines())
    assert b"read-eof" in mux.stdout
    # The one failed job is reported the same way by both.
    assert b"job exit 3" in mux.stderr and b"job exit 3" in ssh.stderr
    assert sorted(mux.stderr.splitlines()) == sorted(ssh.stderr.splitlines())


def test_large_binary_output_is_byte_exact(cluster):
    job = "head -c 3000000 /dev/zero | tr '\\0' '\\377'; printf 'x\\0y' >&2"
    results = _run_modes(cluster, "-j", job)
    for result in results.values():
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"\xff" * 3000000
        assert result.stderr == b"x\0y"


def test_jobs_use_no_local_ssh_process_per_job(cluster, tmp_path):
    # A stand-in for ssh that counts its calls: with masters up, the jobs
    # never start it; only the masters (and their exit requests) do.
    wrapper, counter = _counting_ssh(cluster, tmp_path)
    argv = clstr_argv(cluster, *node_args(cluster.nodes(2)), *(["-j", "true"] * 40))
    argv[argv.index("--ssh-command") + 1] = wrapper
    result = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    calls = counter.read_text().splitlines()
    assert len([call for call in calls if "ControlMaster=yes" in call]) == 2, calls
    assert not [call for call in calls if "clstr-job" in call], calls


def _master_pids(marker_dir_prefix="/tmp/clstr-"):
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                words = handle.read().split(b"\0")
        except OSError:
            continue
        if b"ControlMaster=yes" in words and any(
                word.startswith(b"ControlPath=" + marker_dir_prefix.encode()) for word in words):
            pids.append((int(entry), words))
    return pids


def test_master_killed_mid_job_requeues_the_job(cluster, shared_dir, tmp_path):
    flag = os.path.join(shared_dir, "first")
    joblog = tmp_path / "joblog"
    # The first attempt says it started, then waits; the rerun succeeds.
    job = ("if mkdir %s 2>/dev/null; then echo started; sleep 60; else echo rerun; fi" % flag)
    process = start_clstr(cluster, "-v", "--tag", "--joblog", str(joblog),
                          *node_args(cluster.nodes(2)), "-j", job)
    try:
        host, said = process.stdout.readline().rstrip(b"\n").split(b": ")
        assert said == b"started"
        # Kill that host's master: the running attempt loses its connection.
        ours = [pid for pid, words in _master_pids()
                if cluster.ssh_config.encode() in words and words[-2] == host]
        assert len(ours) == 1
        os.kill(ours[0], signal.SIGKILL)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # As with a plain ssh cut off: that node is retired, the job reruns.
    assert process.returncode == 0, err
    other = [name for name in cluster.nodes(2) if name.encode() != host][0]
    assert out == other.encode() + b": rerun\n"
    assert b"node %s retired: connection lost" % host in err, err
    assert b"Traceback" not in err, err
    # The lost attempt has no exit status of its own: logged as ssh's 255.
    assert [(row[1], row[6]) for row in joblog_rows(joblog)] == [
        (host, b"255"), (other.encode(), b"0")], joblog.read_bytes()


@pytest.mark.parametrize("how", ["timeout", "ctrl-c"])
def test_stopping_through_the_mux_client_leaves_no_remote_process(cluster, how):
    marker = "901.%s%d" % (RUN_ID, len(how))
    job = "sleep %s & echo started; wait" % marker
    args = ["--timeout", "3"] if how == "timeout" else []
    process = start_clstr(cluster, *args, *node_args(cluster.nodes(2)), *(["-j", job] * 2))
    try:
        assert process.stdout.readline() == b"started\n"
        assert process.stdout.readline() == b"started\n"
        if how == "ctrl-c":
            process.send_signal(signal.SIGINT)
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert status == (130 if how == "ctrl-c" else 1)
    assert cluster.remote_processes_left("sleep " + marker) == []


def test_unknown_mux_protocol_falls_back_to_the_ssh_client(tmp_path):
    # A stand-in ssh whose "master" is a socket speaking mux version 99.
    fake_master = tmp_path / "fake_master.py"
    fake_master.write_text(
        "import os, socket, struct, sys\n"
        "path = sys.argv[1]\n"
        "server = socket.socket(socket.AF_UNIX)\n"
        "server.bind(path); server.listen(16)\n"
        "if os.fork(): os._exit(0)\n"
        "os.setsid()\n"
        "server.settimeout(30)\n"
        "try:\n"
        "    while True:\n"
        "        c, _ = server.accept()\n"
        "        c.sendall(struct.pack('>III', 8, 1, 99)); c.close()\n"
        "except OSError:\n"
        "    pass\n")
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text(
        "#!/bin/sh\n"
        "for a; do case $a in ControlMaster=yes) master=1 ;; ControlPath=*) cp=${a#ControlPath=} ;;"
        " -O) stop=1 ;; esac; done\n"
        "if [ -n \"$stop\" ]; then rm -f \"$cp\"; exit 0; fi\n"
        "if [ -n \"$master\" ]; then exec %s %s \"$cp\"; fi\n"
        "exec %s/tests/fakessh \"$@\"\n" % (sys.executable, fake_master, REPO))
    fake_ssh.chmod(0o755)
    result = subprocess.run([sys.executable, "-m", "clstr", "--ssh-command", str(fake_ssh), "-v",
                             "-n", "h1", *(["-j", "echo ran"] * 3)],
                            cwd=REPO, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ran\n" * 3
    said = result.stderr.decode()
    assert said.count("speaks another mux protocol") == 1, said


def _counting_ssh(cluster, tmp_path):
    """An ssh that logs each call's arguments to a file, then runs ssh."""
    counter = tmp_path / "calls"
    wrapper = tmp_path / "ssh"
    wrapper.write_text('#!/bin/sh\necho "$@" >> %s\nexec ssh -F %s "$@"\n'
                       % (counter, cluster.ssh_config))
    wrapper.chmod(0o755)
    return str(wrapper), counter


@pytest.mark.parametrize("args, masters", [
    (["-m", "1"] + ["-j", "echo x"] * 6, 1),   # one job at a time: one master
    (["-j", "echo x"] * 2, 2),                 # two jobs for 30 slots: two masters
])
def test_masters_are_started_only_for_slots_that_run(cluster, tmp_path, args, masters):
    ssh, counter = _counting_ssh(cluster, tmp_path)
    argv = clstr_argv(cluster, *node_args(cluster.nodes(30)), *args)
    argv[argv.index("--ssh-command") + 1] = ssh
    result = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b"x\n") == args.count("echo x")
    calls = counter.read_text().splitlines()
    assert len([call for call in calls if "ControlMaster=yes" in call]) == masters, calls


# -- masters that freeze, die or expire (issue 18) ------------------------------

def _new_master(before, host, cluster):
    """The pid of the one master for ``host`` that was not in ``before``."""
    ours = [pid for pid, words in _master_pids() if pid not in before
            and cluster.ssh_config.encode() in words and words[-2] == host.encode()]
    return ours[0] if len(ours) == 1 else None


def _sleeping(cluster, marker):
    """The jobs' ``sleep`` processes carrying ``marker`` in their environment."""
    return [pid for pid, cmdline in cluster.remote_processes(marker)
            if cmdline.startswith("sleep ")]


def _gone(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


@pytest.mark.parametrize("timeout", [[], ["--timeout", "8"]], ids=["no-timeout", "timeout-8"])
def test_a_frozen_master_is_killed_and_its_jobs_run_elsewhere(cluster, timeout):
    before = {pid for pid, _ in _master_pids()}
    marker = "clstr-frozen-%s-%d" % (RUN_ID, len(timeout))
    jobs = ["CLSTR_TEST_MARK=%s sleep 2; echo job-%d" % (marker, number) for number in range(8)]
    process = start_clstr(cluster, "-v", "--group", "--tag", *timeout, *node_args(cluster.nodes(2)),
                          *[arg for job in jobs for arg in ("-j", job)])
    frozen = None
    try:
        first = b"".join(read_lines(process.stdout, 1, timeout=60))
        host = first.split(b": ")[0].decode()
        frozen = wait_until(lambda: _new_master(before, host, cluster), what="its master")
        # That host's master goes on with its next job: freeze it once that
        # job runs (both nodes' jobs sleeping: two slots in all), never in
        # the gap between two jobs (then no job is lost: the next finds the
        # master gone, a case of its own).
        wait_until(lambda: len(_sleeping(cluster, marker)) == 2, timeout=60,
                   what="a job on each node")
        os.kill(frozen, signal.SIGSTOP)
        out, err = process.communicate(timeout=120)
        out = first + out
        killed = wait_until(lambda: _gone(frozen), timeout=10, what="the frozen master's end")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if frozen and not _gone(frozen):
            os.kill(frozen, signal.SIGKILL)
    assert process.returncode == 0, err
    said = [line.split(b": ", 1)[1] for line in out.splitlines()]
    assert sorted(said) == sorted(("job-%d" % n).encode() for n in range(8)), out
    assert killed
    assert b"did not answer" in err and b"timeout" not in err, err
    assert b"node %s retired: connection lost" % host.encode() in err, err


def _one_node_fed_by_a_pipe(cluster, tmp_path, *args):
    ssh, counter = _counting_ssh(cluster, tmp_path)
    argv = clstr_argv(cluster, "-v", "-n", "node001", "--job-file", "-",
                      "--joblog", str(tmp_path / "joblog"), *args)
    argv[argv.index("--ssh-command") + 1] = ssh
    process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    return process, counter


def _feed(process, line):
    process.stdin.write(line.encode() + b"\n")
    process.stdin.flush()
    return read_lines(process.stdout, 1, timeout=60)[0]


def _control_path(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as handle:
        words = handle.read().split(b"\0")
    return [word for word in words if word.startswith(b"ControlPath=")][0][len(b"ControlPath="):]


@pytest.mark.parametrize("how", ["killed", "socket-removed", "idle-expiry", "frozen"])
def test_a_master_gone_between_jobs_is_started_again(cluster, tmp_path, how):
    before = {pid for pid, _ in _master_pids()}
    # --alive-interval 1: a master has 3 s to answer.
    process, counter = _one_node_fed_by_a_pipe(cluster, tmp_path, "--alive-interval", "1")
    first = None
    try:
        assert _feed(process, "echo one") == b"one\n"
        # Once the job has ended, its master carries nothing.
        wait_until(lambda: joblog_rows(tmp_path / "joblog"), what="the first job's end")
        first = wait_until(lambda: _new_master(before, "node001", cluster), what="the master")
        if how == "killed":
            os.kill(first, signal.SIGKILL)
        elif how == "socket-removed":
            os.unlink(_control_path(first))
        elif how == "frozen":
            os.kill(first, signal.SIGSTOP)
        # The job source pauses past the masters' ControlPersist (idle
        # expiry): the master leaves by itself.
        wait_until(lambda: how in ("socket-removed", "frozen") or _gone(first), timeout=40,
                   what="the master's end")
        assert _feed(process, "echo two") == b"two\n"
        process.stdin.close()
        err = process.stderr.read()
        assert process.wait(timeout=60) == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if how == "frozen" and first and not _gone(first):
            os.kill(first, signal.SIGKILL)
            raise AssertionError("the frozen master was left behind")
    # The second job went through a new master, not a connection of its own.
    calls = counter.read_text().splitlines()
    assert len([call for call in calls if "ControlMaster=yes" in call]) == 2, calls
    assert not [call for call in calls if "clstr-job" in call], calls


def test_a_host_whose_masters_keep_dying_goes_on_with_direct_connections(cluster, tmp_path):
    before = {pid for pid, _ in _master_pids()}
    process, counter = _one_node_fed_by_a_pipe(cluster, tmp_path)
    try:
        for ended in range(1, 5):
            assert _feed(process, "echo %d" % ended) == b"%d\n" % ended
            wait_until(lambda ended=ended: len(joblog_rows(tmp_path / "joblog")) == ended,
                       what="the job's end")
            master = wait_until(lambda: _new_master(before, "node001", cluster), what="a master")
            before.add(master)
            os.kill(master, signal.SIGKILL)
        assert _feed(process, "echo 5") == b"5\n"
        process.stdin.close()
        err = process.stderr.read()
        assert process.wait(timeout=60) == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # The first master and three restarts; the last job connects on its own.
    calls = counter.read_text().splitlines()
    assert len([call for call in calls if "ControlMaster=yes" in call]) == 4, calls
    assert len([call for call in calls if "clstr-job" in call]) == 1, calls


@pytest.mark.parametrize("args", [
    ["-m", "1", "-n", "node[001-300]"] + ["-j", "echo x"] * 2,   # one at a time, 300 hosts
    ["-n", "node[001-030]"] + ["-j", "echo x"] * 2,             # two jobs for 30 hosts
    ["-n", "node001"] * 4 + ["-j", "echo x"] * 8,                # four slots on one host
], ids=["m1-300-hosts", "2-jobs-30-hosts", "4-slots-1-host"])
def test_dry_run_shows_the_masters_a_run_starts(cluster, tmp_path, args):
    ssh, counter = _counting_ssh(cluster, tmp_path)
    argv = clstr_argv(cluster, *args)
    argv[argv.index("--ssh-command") + 1] = ssh
    result = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    started = [call.split()[-1] for call in counter.read_text().splitlines()
               if "ControlMaster=yes" in call]
    dry = subprocess.run(argv + ["--dry-run"], cwd=REPO, capture_output=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert dry.returncode == 0, dry.stderr
    shown = [line.split()[-1] for line in dry.stdout.decode().splitlines()
             if "ControlMaster=yes" in line]
    assert len(shown) == len(started), (shown, started)
    # The same hosts' slots (which of 300 hosts gets the one master is random).
    assert len(set(shown)) == len(set(started))
