"""The remote wrapper over the real loopback sshd: a job is everything it
started that still holds its fd 8, held while any of it runs and stopped with
it when the session ends early; `setsid cmd 8>&- &` is the job's way to
leave something running.  The
wrapper runs in the login shell itself (no exec) when clstr knows that shell.

Markers are unusual sleep durations (``sleep 901.<RUN_ID>``): they stay on the
sleep's own command line even when dash execs the last command of a job."""

import os
import selectors
import signal
import subprocess
import time

import pytest

from clstr.transport.wrapper import wrapped_command
from clstr_run import RUN_ID, clstr, start_clstr

SHELLS = [("node", "dash"), ("bashnode", "bash")]


def host(cluster, prefix):
    if prefix == "bashnode" and not cluster.bash_user:
        pytest.skip("a second login user (with bash) can only be made as root")
    return "%s001" % prefix


def marker(n):
    """A sleep duration no other test or run uses: ``9NN.<RUN_ID>``."""
    return "9%02d.%s" % (n, RUN_ID)


def read_line(process, timeout=60):
    """The next line clstr prints, waiting at most ``timeout`` seconds."""
    line = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if selector.select(timeout=max(0, deadline - time.monotonic())):
                byte = os.read(process.stdout.fileno(), 1)
                if not byte:
                    break
                line += byte
    return line


def stop(process):
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.parametrize("prefix, shell", SHELLS)
def test_timeout_stops_a_background_child_the_job_left_running(cluster, prefix, shell):
    mark = marker(1)
    result = clstr(cluster, "--timeout", "8", "-n", host(cluster, prefix),
                   "-j", "sleep %s & echo started" % mark)
    assert result.stdout == b"started\n", result.stderr
    assert result.returncode == 1
    assert b"timeout: stopped after 8s" in result.stderr
    assert cluster.remote_processes_left(mark) == []


@pytest.mark.parametrize("prefix, shell", SHELLS)
def test_ctrl_c_stops_a_background_child_the_job_left_running(cluster, prefix, shell):
    mark = marker(2)
    process = start_clstr(cluster, "-n", host(cluster, prefix),
                          "-j", "sleep %s & echo started" % mark)
    try:
        assert read_line(process) == b"started\n"
        # The job's shell has exited; only its background child is left.
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert cluster.remote_processes_left(mark) == []
    finally:
        stop(process)


@pytest.mark.parametrize("prefix, shell", SHELLS)
def test_background_child_holds_its_job_until_it_ends(cluster, shared_dir, prefix, shell):
    # One slot: the second job starts only when the first has completed.
    # The child writes its output to a file, not to the job's stdout, so
    # nothing but the wrapper can hold the job open.
    out = os.path.join(shared_dir, "late")
    result = clstr(cluster, "-n", host(cluster, prefix),
                   "-j", "(sleep 2; echo late > %s) >/dev/null 2>&1 & echo early" % out,
                   "-j", "cat %s" % out)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"early\nlate\n"


@pytest.mark.parametrize("prefix, shell", SHELLS)
def test_exit_status_is_the_job_shells_even_while_a_child_holds_the_job(cluster, prefix,
                                                                        shell):
    mark = marker(3)
    result = clstr(cluster, "--job-failure", "job", "-n", host(cluster, prefix),
                   "-j", "exit 3", "-j", "sleep 1.%s >/dev/null & exit 4" % mark,
                   "-j", "sleep 1.%s & true" % mark)
    assert result.returncode == 1
    report = result.stderr.decode()
    assert "'exit 3': %s001: job exit 3" % prefix in report
    assert "exit 4': %s001: job exit 4" % prefix in report
    assert "2 of 3 jobs were not completed" in report
    assert cluster.remote_processes_left(mark) == []


@pytest.mark.parametrize("prefix, shell", SHELLS)
def test_jobs_without_background_children_leave_nothing_behind(cluster, prefix, shell):
    mark = marker(4)
    result = clstr(cluster, "-n", host(cluster, prefix),
                   *(["-j", "echo $$ # %s" % mark] * 5))
    assert result.returncode == 0, result.stderr
    assert len(set(result.stdout.splitlines())) == 5
    assert cluster.remote_processes_left(mark) == []


@pytest.mark.parametrize("prefix, shell", SHELLS)
def test_the_watcher_ends_with_its_job(cluster, prefix, shell):
    # The wrapper kills its watcher as it ends.  A watcher left to see sshd
    # close its stdin would stop the session's process group, and with it
    # this sleep: it let go of fd 8 (so the job ended) but stayed in the
    # group.  The inline wrapper's watcher is a fork of the login shell, so
    # the marker in the job's text is on its command line.
    mark, left = marker(10), marker(11)
    result = clstr(cluster, "-n", host(cluster, prefix),
                   "-j", "sleep %s 8>&- >/dev/null 2>&1 </dev/null & true # %s" % (left, mark))
    try:
        assert result.returncode == 0, result.stderr
        assert cluster.remote_processes_left(mark, timeout=60) == []
        assert [cmdline.split() for _, cmdline in cluster.remote_processes(left)] == [
            ["sleep", left]]
    finally:
        for pid, _ in cluster.remote_processes(left):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("prefix, shell", SHELLS)
def test_jobs_through_the_master_run_in_the_login_shell_itself(cluster, prefix, shell):
    # Through the master, clstr has asked the host for its login shell, and
    # the job runs in that very shell: its process ($$) is the one sshd
    # started, whose command line is the wrapper's.  Through a plain ssh
    # (--no-multiplex) the login shell is unknown and the job gets a shell of
    # its own.  $0 is the shell's name either way, as with a plain ssh.
    job = ("echo $0 $#; tr '\\0' ' ' </proc/$$/cmdline | grep -c 'hel''d=\\$' || true")
    inline = clstr(cluster, "-n", host(cluster, prefix), "-j", job)
    assert (inline.returncode, inline.stdout) == (0, b"%s 0\n1\n" % shell_name(shell).encode()), \
        inline.stderr
    direct = clstr(cluster, "--no-multiplex", "-n", host(cluster, prefix), "-j", job)
    assert (direct.returncode, direct.stdout) == (0, b"%s 0\n0\n" % shell_name(shell).encode()), \
        direct.stderr


def test_a_login_shell_whose_answer_is_unusable_gets_the_wrapper_every_shell_runs(cluster):
    # bash sources ~/.bashrc in sessions sshd starts, and rcnode's talks: the
    # probe's answer is not "bash 42" alone, so clstr does not rely on it and
    # jobs start `sh` for the wrapper (their own shell, not the login one).
    if not cluster.rc_user:
        pytest.skip("a login user with a talking ~/.bashrc can only be made as root")
    job = "tr '\\0' ' ' </proc/$$/cmdline | grep -c 'hel''d=\\$' || true"
    result = clstr(cluster, "-v", "-n", "rcnode001", "-j", job)
    # (The job's own bash, in a session sshd started, sources it too.)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() in ([b"hello from bashrc", b"0"],
                                          [b"hello from bashrc"] * 2 + [b"0"]), result.stdout
    # -v says why, once: the answer it could not use.
    assert result.stderr.count(b"login shell not known") == 1, result.stderr
    assert b"hello from bashrc" in result.stderr, result.stderr


def shell_name(shell):
    """The name sshd runs a login shell under (the test users' is /bin/sh
    for dash)."""
    return "sh" if shell == "dash" else shell


@pytest.mark.parametrize("prefix, shell", SHELLS)
def test_a_process_started_with_setsid_outlives_its_job(cluster, prefix, shell):
    kept, kept_too, stopped = marker(5), marker(6), marker(8)
    process = start_clstr(
        cluster, "-n", host(cluster, prefix),
        "-j", "setsid sleep %s >/dev/null 2>&1 </dev/null 8>&- & echo first" % kept,
        "-j", "setsid sleep %s >/dev/null 2>&1 </dev/null 8>&- & sleep %s & "
        # Ctrl-C only once the sleep runs: before its exec, setsid is still
        # in the job's group.
        "until pgrep -x -f 'sleep %s' >/dev/null; do sleep 0.05; done; echo second"
        % (kept_too, stopped, kept_too))
    try:
        # The first job completes at once: the setsid'd sleep left its
        # session and let go of fd 8.
        assert read_line(process) == b"first\n"
        assert read_line(process) == b"second\n"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert cluster.remote_processes_left(stopped) == []
        for mark in (kept, kept_too):
            assert [cmdline.split() for _, cmdline in cluster.remote_processes(mark)] == [
                ["sleep", mark]]
    finally:
        stop(process)
        for mark in (kept, kept_too):
            for pid, _ in cluster.remote_processes(mark):
                os.kill(pid, signal.SIGKILL)
    assert cluster.remote_processes_left(kept) == []
    assert cluster.remote_processes_left(kept_too) == []


def test_wrapper_runs_inline_in_a_posix_login_shell(cluster, tmp_path):
    """The inline form (no second shell) keeps the wrapper's guarantees,
    driven here through a plain ssh."""
    mark = marker(7)
    for login in ("/bin/sh", "/bin/bash"):
        remote = wrapped_command(b"sleep 1.%s & echo \"it's $1\"; exit 5" % mark.encode(),
                                 login_shell=login)
        assert not remote.startswith(b"exec sh")
        prefix = "bashnode" if login == "/bin/bash" else "node"
        stdin_read, stdin_write = os.pipe()
        try:
            done = subprocess.run(cluster.ssh_argv + [host(cluster, prefix), remote],
                                  stdin=stdin_read, capture_output=True, timeout=60)
        finally:
            os.close(stdin_read)
            os.close(stdin_write)
        assert (done.returncode, done.stdout) == (5, b"it's \n"), done.stderr
        assert cluster.remote_processes_left(mark) == []
