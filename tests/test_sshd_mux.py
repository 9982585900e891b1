"""Jobs through clstr's own mux client over real masters and the real sshd
(issue 12): the same bytes, statuses and stops as through the ssh client."""

import os
import signal
import subprocess
import sys

import pytest

from clstr_run import REPO, RUN_ID, clstr, clstr_argv, joblog_rows, node_args, start_clstr

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
