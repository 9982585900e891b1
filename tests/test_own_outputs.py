"""A run and the files it writes: Ctrl-C wherever clstr waits before or
outside its run (no traceback), outputs that belong to one run only, and
outputs that must not be an input."""

import errno
import fcntl
import os
import signal
import subprocess
import sys
import termios

import pytest

from clstr_run import REPO, wait_until

FAKESSH = os.path.join(REPO, "tests", "fakessh")
F_GETPIPE_SZ = 1032  # fcntl.F_GETPIPE_SZ from Python 3.10 on


def start(*args, **kwargs):
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "clstr", "--ssh-command", FAKESSH]
                            + list(args), cwd=REPO, **kwargs)


def blocked_opening_a_fifo(pid):
    """True while ``pid`` waits in open() for a FIFO's other end (the
    kernel's wait_for_partner)."""
    try:
        with open("/proc/%d/wchan" % pid) as wchan:
            return wchan.read() == "wait_for_partner"
    except OSError:
        return False


def interrupted_quietly(process):
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err
    return out, err


# -- Ctrl-C -------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--joblog", "--stdout", "--stderr"])
def test_ctrl_c_while_opening_a_fifo_nobody_reads_is_quiet(tmp_path, option):
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    process = start("-n", "a", "-j", "echo x", option, str(fifo))
    try:
        wait_until(lambda: blocked_opening_a_fifo(process.pid), what="the FIFO being opened")
        interrupted_quietly(process)
    finally:
        process.kill()
        process.wait()


def test_ctrl_c_while_waiting_for_a_node_list_is_quiet(tmp_path):
    fifo = tmp_path / "nodes"
    os.mkfifo(str(fifo))
    process = start("-N", str(fifo), "-j", "echo x")
    writer = None
    try:
        def reader_there():
            try:
                return os.open(str(fifo), os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
                return None
        # clstr opened the node file and now waits for its lines.
        writer = wait_until(reader_there, what="clstr reading the node file")
        interrupted_quietly(process)
    finally:
        if writer is not None:
            os.close(writer)
        process.kill()
        process.wait()


def test_ctrl_c_while_a_slow_reader_takes_the_dry_run_is_quiet(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.write_text("echo %s\n" % ("x" * 100) * 20000)
    read_end, write_end = os.pipe()
    try:
        process = start("-n", "a", "-J", str(jobs), "--dry-run", stdout=write_end)
        os.close(write_end)
        write_end = None
        try:
            size = fcntl.fcntl(read_end, F_GETPIPE_SZ)
            held = bytearray(4)

            def pipe_full():
                fcntl.ioctl(read_end, termios.FIONREAD, held)
                return int.from_bytes(held, sys.byteorder) >= size // 2
            # Output is under way, and 2 MB cannot fit: clstr waits for us.
            wait_until(pipe_full, what="the pipe to fill")
            interrupted_quietly(process)
        finally:
            process.kill()
            process.wait()
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)
