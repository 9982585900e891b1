"""The remote wrapper (transport/wrapper.py) run locally under dash and bash, with
`setsid -w` standing in for sshd (which starts every session's shell in a
session of its own), and the login shell probe's answers.  The same
guarantees over the real sshd are in test_sshd_wrapper.py."""

import os
import shutil
import signal
import subprocess
import threading

import pytest

from clstr.transport.endreport import ReportReader
from clstr.transport.prelude import WORKDIR_FAILED, job_prelude
from clstr.transport.wrapper import (
    LOGIN_SHELL_PROBE,
    STDIN_ABOVE,
    login_shell_from_probe,
    stdin_payload,
    wrapped_command,
)
from clstr_run import RUN_ID, local_processes, local_processes_left, wait_until

SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)]
FORMS = ["inline", "universal"]


def run_wrapped(shell, form, command, stop_when=None, timeout=60, term_ignored=False,
                after=lambda: None, payload=None, env=(), prelude=b""):
    """Run ``command`` (bytes) under the wrapper as sshd would, with ``shell``
    as the login shell; close its stdin once ``stop_when()`` holds (None:
    when it has ended).  ``after()`` is called once the wrapper has ended and
    been reaped, while stdin is still open unless ``stop_when`` closed it.
    ``term_ignored``: start it with SIGTERM ignored.  Returns (status,
    stdout, stderr), stderr without the wrapper's reports (endreport.py),
    whose end status must be the wrapper's own exit status.  ``payload``:
    what is written on stdin first (default: ``stdin_payload(command)``);
    ``env``: more environment variables; ``prelude``: the job's
    (transport/prelude.py)."""
    login = "/bin/" + shell
    remote = wrapped_command(command, login if form == "inline" else None, prelude=prelude)
    if payload is None:
        payload = stdin_payload(command) or b""
    stdin_read, stdin_write = os.pipe()
    env = dict(os.environ, SHELL=shutil.which(shell), **dict(env))
    ignore_term = (lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)) if term_ignored else None
    try:
        process = subprocess.Popen(["setsid", "-w", shell, "-c", remote], stdin=stdin_read,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                   preexec_fn=ignore_term)
        os.close(stdin_read)
        stdin_read = None
        writer = threading.Thread(target=write_all, args=(stdin_write, payload), daemon=True)
        writer.start()
        if stop_when is not None:
            wait_until(lambda: stop_when() or process.poll() is not None, timeout=timeout,
                       what="the job to be ready to stop")
            writer.join(timeout)
            os.close(stdin_write)
            stdin_write = None
        out, err = process.communicate(timeout=timeout)
        writer.join(timeout)
        after()
    finally:
        for fd in (stdin_read, stdin_write):
            if fd is not None:
                os.close(fd)
    reports = ReportReader()
    err = reports.feed(err) + reports.close()
    assert reports.started
    if reports.status is not None:
        assert reports.status == process.returncode
    if reports.undelivered is not None:
        return "undelivered %d" % reports.undelivered, out, err
    return process.returncode, out, err


def write_all(fd, data):
    """Write ``data`` to the pipe ``fd`` (kept open), as far as its reader
    takes it."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:  # the wrapper has gone
        pass


def sleep_marker(n):
    """A sleep duration no other test uses: its own argv word."""
    return "8%02d.%s" % (n, RUN_ID)


pytestmark = pytest.mark.skipif(not shutil.which("setsid") or not os.path.isdir("/proc"),
                                reason="needs util-linux setsid and /proc")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_status_and_both_streams_are_the_jobs(shell, form):
    command = b"printf 'out\\0\\377'; echo \"it's\" err >&2; exit 7"
    assert run_wrapped(shell, form, command) == (7, b"out\0\377", b"it's err\n")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_job_reads_eof_and_sees_no_arguments(shell, form):
    status, out, err = run_wrapped(shell, form, b"cat; echo \"$0 $# [$1]\"")
    assert (status, out, err) == (0, b"%s 0 []\n" % shell.encode(), b"")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_background_child_holds_its_job(shell, form, tmp_path):
    # The child's output goes to a file, so only the wrapper can hold the job;
    # it is a program of its own (exec'd), which keeps no descriptor the
    # shell marked close-on-exec.
    late = tmp_path / "late"
    command = b"sh -c 'sleep 0.5; echo late > %s' >/dev/null 2>&1 & echo early" % bytes(late)
    assert run_wrapped(shell, form, command) == (0, b"early\n", b"")
    assert late.read_bytes() == b"late\n"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_stdin_eof_stops_the_whole_job(shell, form):
    # The sleeps outlast run_wrapped's 60 s: only the wrapper can end them.
    mark = sleep_marker(1)
    status, out, _ = run_wrapped(shell, form, b"sleep %s & sleep %s; echo never"
                                 % (mark.encode(), mark.encode()),
                                 stop_when=lambda: len(local_processes(mark, True)) == 2)
    assert out == b"" and status in (143, -15), status
    assert local_processes_left(mark, whole_word=True) == []


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_a_job_ignoring_term_is_killed(shell, form):
    # Stopped only once its sleep runs, so TERM is ignored by then (the
    # sleep inherits that): only the watcher's KILL can end it, and it ends
    # the whole session, wrapper included.
    mark = sleep_marker(2)
    try:
        status, out, _ = run_wrapped(shell, form, b"trap '' TERM; sleep %s; echo never"
                                     % mark.encode(),
                                     stop_when=lambda: local_processes(mark, True))
        assert out == b"" and status == -signal.SIGKILL, status
        assert local_processes_left(mark, whole_word=True) == []
    finally:
        for pid in local_processes(mark, whole_word=True):  # left by a failed test only
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("shell", SHELLS)
def test_kill_0_in_a_job_ends_it_with_a_status(shell):
    # `trap 'kill 0' EXIT` is a common way to clean up: the wrapper's shell
    # is in the job's process group and must still say how it ended.
    status, out, _ = run_wrapped(shell, "inline", b"trap 'kill 0' EXIT; echo x; exit 4")
    assert (status, out) == (143, b"x\n")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_the_watcher_is_gone_when_the_wrapper_ends_even_if_a_term_is_lost(shell, form):
    # A TERM that reaches the new watcher before it has reset the traps it
    # inherited is lost (seen on a loaded machine with quick jobs: the
    # watcher lingered until sshd closed stdin, took that for an early end
    # and stopped the session).  Under a shell started with TERM ignored
    # every TERM is lost; stdin stays open throughout, so only the wrapper's
    # own kill can end the watcher.
    mark = "watcher-%s-%s" % (RUN_ID, form)
    left = []
    status, out, _ = run_wrapped(shell, form, b"true # %s" % mark.encode(), term_ignored=True,
                                 after=lambda: left.extend(local_processes_left(mark)))
    assert (status, out) == (0, b"")
    assert left == []


def test_probe_answer_names_only_posix_shells():
    assert login_shell_from_probe(0, b"sh 42\n") == "sh"
    assert login_shell_from_probe(0, b"bash 42\n") == "bash"
    assert login_shell_from_probe(1, b"sh 42\n") is None
    # csh and fish fail at $((...)); a Bourne shell echoes it as is.
    assert login_shell_from_probe(1, b"") is None
    assert login_shell_from_probe(0, b"sh $((6*7))\n") is None
    # An rc file that prints something makes the answer unusable.
    assert login_shell_from_probe(0, b"Welcome!\nbash 42\n") is None


@pytest.mark.parametrize("shell", SHELLS)
def test_probe_is_understood_when_a_posix_shell_answers(shell):
    done = subprocess.run([shell, "-c", LOGIN_SHELL_PROBE], capture_output=True, timeout=30)
    assert login_shell_from_probe(done.returncode, done.stdout) == shell


def test_only_known_posix_login_shells_run_the_wrapper_themselves():
    for login in ("sh", "dash", "/bin/bash"):
        assert not wrapped_command(b"true", login).startswith(b"exec ")
    for login in (None, "", "csh", "/usr/bin/fish", "zsh"):
        assert wrapped_command(b"true", login).startswith(b"exec sh -c '")


# -- a command too big for a command line comes on stdin ------------------------

def big_command(then, size=STDIN_ABOVE + 1):
    """A command of more than ``size`` bytes that runs ``then`` (bytes)."""
    return b": " + b"A" * size + b"; " + then


def left_in(directory):
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_a_big_command_is_read_from_stdin_and_run_with_stdin_at_eof(shell, form, tmp_path):
    command = big_command(b"cat; echo \"$#\" ran; echo err >&2; exit 5", size=1 << 20)
    assert not wrapped_command(command, "/bin/" + shell).count(b"AAAA")
    assert run_wrapped(shell, form, command, env={"TMPDIR": str(tmp_path)}) == (
        5, b"0 ran\n", b"err\n")
    assert left_in(tmp_path) == []


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_stdin_eof_after_a_big_command_stops_the_job(shell, form, tmp_path):
    # The watcher reads stdin only after the command: the EOF that comes
    # then is the stop.
    mark = sleep_marker(3)
    command = big_command(b"sleep %s; echo never" % mark.encode())
    status, out, _ = run_wrapped(shell, form, command, env={"TMPDIR": str(tmp_path)},
                                 stop_when=lambda: local_processes(mark, True))
    assert out == b"" and status in (143, -15), status
    assert local_processes_left(mark, whole_word=True) == []
    assert left_in(tmp_path) == []


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_a_big_command_cut_short_is_reported_undelivered_and_not_run(shell, form, tmp_path):
    command = big_command(b"echo ran")
    payload = stdin_payload(command)[:-100]
    status, out, _ = run_wrapped(shell, form, command, payload=payload,
                                 env={"TMPDIR": str(tmp_path)}, stop_when=lambda: True)
    assert (status, out) == ("undelivered %d" % (len(command) - 100), b"")
    assert left_in(tmp_path) == []


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_a_node_that_cannot_store_a_big_command_reports_it_undelivered(shell, form, tmp_path):
    command = big_command(b"echo ran")
    status, out, err = run_wrapped(shell, form, command,
                                   env={"TMPDIR": str(tmp_path / "missing")})
    assert (status, out, err) == ("undelivered 0", b"", b"")


# -- the job's prelude: its environment and directory ----------------------------

# Login shells that cannot read the wrapper: it runs under sh, the job under them.
OTHER_LOGIN_SHELLS = [shell for shell in ("tcsh", "fish") if shutil.which(shell)]
# Bytes that one login shell's quoting or another's mangles.
HOSTILE = b"it's \"q\" $HOME \\ \\\\ \\' !x \nline \xff"


def prelude_in(directory, value=HOSTILE):
    return job_prelude(4, 2, "lab01", [(b"V", value)], os.fsencode(directory))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_the_job_runs_after_its_prelude_in_its_directory(shell, form, tmp_path):
    workdir = tmp_path / "made"
    status, out, err = run_wrapped(shell, form, b'printf "%s|%s|%s" "$V" "$CLSTR_SEQ" "$(pwd)"',
                                   prelude=prelude_in(workdir))
    assert (status, out, err) == (0, HOSTILE + b"|4|" + bytes(workdir), b"")


@pytest.mark.parametrize("shell", OTHER_LOGIN_SHELLS)
def test_a_csh_or_fish_job_gets_its_environment_and_directory_from_sh(shell, tmp_path):
    # The job runs in the login shell ($SHELL -c): only commands every shell
    # reads (csh's >&2 is no dup).  printenv prints the value and a newline.
    workdir = tmp_path / "made"
    status, out, err = run_wrapped(shell, "universal", b"printenv V; printenv CLSTR_HOST; pwd",
                                   prelude=prelude_in(workdir))
    assert (status, err) == (0, b"")
    assert out == HOSTILE + b"\nlab01\n" + bytes(workdir) + b"\n"


@pytest.mark.parametrize("shell", OTHER_LOGIN_SHELLS)
def test_a_csh_or_fish_job_still_runs_with_its_status_and_streams(shell):
    status, out, err = run_wrapped(shell, "universal",
                                   b"echo out; sh -c 'echo err >&2'; exit 3",
                                   prelude=job_prelude(1, 1, "h"))
    assert (status, out, err) == (3, b"out\n", b"err\n")


@pytest.mark.parametrize("shell, form", [(shell, form) for shell in SHELLS for form in FORMS]
                         + [(shell, "universal") for shell in OTHER_LOGIN_SHELLS])
def test_a_workdir_that_cannot_be_entered_is_the_jobs_exit(shell, form, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    status, out, err = run_wrapped(shell, form, b"echo ran", prelude=prelude_in(blocked / "d"))
    assert (status, out) == (WORKDIR_FAILED, b"")
    assert err.endswith(b"clstr: --workdir %s/d could not be entered\n" % bytes(blocked)), err


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shell", SHELLS)
def test_a_big_command_runs_after_its_prelude(shell, form, tmp_path):
    workdir = tmp_path / "made"
    command = big_command(b'printf "%s|%s" "$V" "$(pwd)"')
    status, out, err = run_wrapped(shell, form, command, prelude=prelude_in(workdir),
                                   env={"TMPDIR": str(tmp_path)})
    assert (status, out, err) == (0, HOSTILE + b"|" + bytes(workdir), b"")
