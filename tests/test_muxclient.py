"""clstr's own mux client (clstr/transport/muxclient.py) against real ControlMasters on
the loopback sshd, and against fake masters for what a real one never says.

What a job gives through MuxAttempt must be what ``ssh -S socket host cmd``
gives: exit status, stdout and stderr bytes, stdin EOF."""

import itertools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import pytest

from clstr.failures import MuxError
from clstr.loop import EventLoop
from clstr.transport import muxclient
from clstr.transport.endreport import ReportReader
from clstr.transport.muxclient import (
    MUX_MSG_HELLO,
    AliveCheck,
    MalformedMessage,
    MuxAttempt,
    Terminate,
    alive_check_packet,
    alive_reply_pid,
    hello_packet,
    new_session_packet,
    split_packets,
    terminate_packet,
)
from clstr.transport.muxsession import MuxSession
from clstr.transport.wrapper import wrapped_command
from clstr_run import RUN_ID, wait_until
from cluster import LoopbackCluster

HOST = "node001"


class ControlMaster:
    """A ControlMaster for ``host`` started the way clstr starts them, with
    its socket in a fresh directory."""

    def __init__(self, cluster, host=HOST):
        self.cluster = cluster
        self.host = host
        self.dir = tempfile.mkdtemp(prefix="mux-", dir="/tmp")
        self.path = os.path.join(self.dir, "s")
        self.log = os.path.join(self.dir, "log")
        # The master lives on after this ssh exits and keeps its stderr: a
        # file, never a pipe we would wait on.
        with open(self.log, "wb") as log:
            started = subprocess.run(
                cluster.ssh_argv + ["-o", "ControlMaster=yes", "-o", "ControlPath=" + self.path,
                                    "-o", "ControlPersist=60", "-N", host],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=60)
        assert started.returncode == 0, open(self.log).read()
        assert os.path.exists(self.path)

    def ssh(self, *args, **kwargs):
        return subprocess.run(self.cluster.ssh_argv + ["-S", self.path] + list(args),
                              capture_output=True, timeout=60, **kwargs)

    @property
    def pid(self):
        said = self.ssh("-O", "check", self.host).stderr.decode()
        return int(re.search(r"pid=(\d+)", said).group(1))

    def stop(self):
        if os.path.exists(self.path):
            self.ssh("-O", "exit", self.host)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def master(cluster):
    running = ControlMaster(cluster)
    yield running
    running.stop()


@pytest.fixture
def own_master(cluster):
    """A master for one test that may kill it."""
    running = ControlMaster(cluster)
    yield running
    running.stop()


class Outcome:
    """What one attempt reported."""

    def __init__(self):
        self.out = {1: bytearray(), 2: bytearray()}
        self.opened = False
        self.result = None
        self.attempt = None

    def on_output(self, stream, data):
        assert self.result is None, "output after the end"
        self.out[stream] += data

    def on_exit(self, code):
        assert self.result is None
        self.result = ("exit", code)

    def on_error(self, kind, detail):
        assert self.result is None
        self.result = (kind, detail)

    @property
    def stdout(self):
        return bytes(self.out[1])

    @property
    def stderr(self):
        return bytes(self.out[2])


def start(loop, control_path, command, stdin=b"", close_stdin=True, reply_timeout=None):
    outcome = Outcome()

    def opened():
        outcome.opened = True

    outcome.attempt = MuxAttempt(loop, control_path, command, outcome.on_output,
                                 outcome.on_exit, outcome.on_error, on_opened=opened,
                                 reply_timeout=reply_timeout)
    if stdin:
        os.write(outcome.attempt.stdin_fd, stdin)
    if close_stdin:
        outcome.attempt.close_stdin()
    return outcome


def run_until(loop, condition, timeout=60):
    """Run ``loop`` until ``condition()`` holds; fail after ``timeout``.
    The loop also wakes every 50 ms, for conditions on things outside it
    (a remote process appearing)."""
    deadline = time.monotonic() + timeout
    ticker = []

    def tick():
        ticker[:] = [loop.call_later(0.05, tick)]
    tick()
    held = []

    def holds():
        # Asked once per turn, and the answer kept: asking again after the
        # loop could find a passing state already gone.
        held[:] = [condition()]
        return held[0]
    loop.run_while(lambda: not holds() and time.monotonic() < deadline)
    ticker[0].cancel()
    assert held and held[0], "gave up after %gs" % timeout


_serial = itertools.count(1)


def sleep_marker():
    """``sleep N`` with an N of fixed width unique to this run and test:
    another run's job never matches it, nor one marker another."""
    return "sleep 3011.%s%03d" % (RUN_ID, next(_serial))


def spelled_apart(marker):
    """A job running ``marker`` whose own text does not hold it: the
    wrapper's command line carries the job's text, so a test waiting for
    the marker's process must not find the wrapper instead (and stop the job
    before it has started: a TERM reaching a subshell dash has just forked
    can be lost)."""
    return marker.replace("sleep ", "s=sleep; $s ", 1).encode()


@pytest.fixture
def loop():
    running = EventLoop()
    yield running
    running.close()


def run_mux(loop, control_path, commands, **kwargs):
    outcomes = [start(loop, control_path, command, **kwargs) for command in commands]
    run_until(loop, lambda: all(o.result is not None for o in outcomes))
    return outcomes


def run_ssh(master, command, stdin=b""):
    return master.ssh(master.host, command, input=stdin)


# -- the same as ssh -------------------------------------------------------------

def test_exit_status_is_the_commands_as_through_ssh(loop, master):
    commands = [b"exit 0", b"exit 3", b"exit 255", b"true", b"false"]
    outcomes = run_mux(loop, master.path, commands)
    for command, outcome in zip(commands, outcomes):
        expected = run_ssh(master, command.decode()).returncode
        assert outcome.opened
        assert outcome.result == ("exit", expected), command


@pytest.fixture
def binary_file(shared_dir):
    path = os.path.join(shared_dir, "blob")
    with open(path, "wb") as blob:
        blob.write(os.urandom(5 * 1024 * 1024) + bytes(range(256)) * 7)
    os.chmod(path, 0o644)
    return path


def test_stdout_and_stderr_bytes_are_those_ssh_gives(loop, master, binary_file):
    # 5 MB and more on both streams at once, every byte value, a NUL, and an
    # unterminated last line.
    command = ("cat %s; cat %s >&2; printf 'end\\000no newline'; printf 'err tail' >&2"
               % (binary_file, binary_file))
    through_ssh = run_ssh(master, command)
    [outcome] = run_mux(loop, master.path, [command.encode()])
    assert outcome.result == ("exit", 0)
    assert len(outcome.stdout) > 5 * 1024 * 1024
    assert outcome.stdout == through_ssh.stdout
    assert outcome.stderr == through_ssh.stderr


def test_output_after_the_exit_status_is_delivered_as_ssh_does(loop, master):
    # sshd sends the exit status when the command exits; a background child
    # still holds stdout and writes later.  Meanwhile we do not read, so the
    # master also still holds most of the first megabyte.  ssh waits for
    # all of it; dropping the connection at the exit status would lose it.
    command = "head -c 1000000 /dev/zero; (sleep 1; echo late; echo late >&2) &"
    outcome = start(loop, master.path, command.encode())
    outcome.attempt.pause()
    run_until(loop, lambda: outcome.attempt.session.exit_code is not None)
    outcome.attempt.resume()
    run_until(loop, lambda: outcome.result is not None)
    through_ssh = run_ssh(master, command)
    assert outcome.result == ("exit", 0)
    assert outcome.stdout == through_ssh.stdout == bytes(1000000) + b"late\n"
    assert outcome.stderr == through_ssh.stderr == b"late\n"


def test_output_still_in_the_pipes_when_the_session_ends_is_delivered(loop, master):
    command = b"head -c 10000 /dev/zero; echo done >&2"
    outcome = start(loop, master.path, command)
    outcome.attempt.pause()
    run_until(loop, lambda: outcome.attempt.session.finished)
    assert outcome.result is None
    outcome.attempt.resume()
    run_until(loop, lambda: outcome.result is not None)
    assert outcome.result == ("exit", 0)
    assert outcome.stdout == bytes(10000)
    assert outcome.stderr == b"done\n"


def test_closed_stdin_is_immediate_eof_for_the_command(loop, master):
    [outcome] = run_mux(loop, master.path, [b"cat; echo after-eof"])
    assert outcome.result == ("exit", 0)
    assert outcome.stdout == run_ssh(master, "cat; echo after-eof").stdout == b"after-eof\n"


def test_what_is_written_to_stdin_reaches_the_command(loop, master):
    command = "read x; echo got:$x"
    [outcome] = run_mux(loop, master.path, [command.encode()], stdin=b"hello\n")
    assert outcome.result == ("exit", 0)
    assert outcome.stdout == run_ssh(master, command, stdin=b"hello\n").stdout == b"got:hello\n"


def test_twenty_sessions_run_at_once_on_one_master(loop, master, shared_dir):
    # Each job waits until all twenty have checked in: only sessions that
    # are open together can all print 20.
    barrier = os.path.join(shared_dir, "barrier")
    os.mkdir(barrier)
    os.chmod(barrier, 0o1777)
    commands = [("touch %s/%d; i=0; while [ $(ls %s | wc -l) -lt 20 ] && [ $i -lt 600 ]; "
                 "do sleep 0.1; i=$((i+1)); done; ls %s | wc -l; echo job %d >&2"
                 % (barrier, n, barrier, barrier, n)).encode() for n in range(20)]
    outcomes = run_mux(loop, master.path, commands)
    for n, outcome in enumerate(outcomes):
        assert outcome.result == ("exit", 0)
        assert outcome.stdout.strip() == b"20"
        assert outcome.stderr == b"job %d\n" % n


# -- under clstr's remote wrapper ---------------------------------------------

def test_wrapped_job_gives_its_status_and_output(loop, master):
    command = wrapped_command(b"echo out; echo 'it''s' err >&2; exit 7")
    # The wrapper stops the job at EOF on stdin: keep it open, as clstr does.
    [outcome] = run_mux(loop, master.path, [command], close_stdin=False)
    assert outcome.result == ("exit", 7)
    assert outcome.stdout == b"out\n"
    reports = ReportReader()
    assert reports.feed(outcome.stderr) + reports.close() == b"its err\n"
    assert (reports.started, reports.status) == (True, 7)


def test_stop_closes_stdin_and_the_wrapper_stops_the_whole_job(loop, master, cluster):
    marker = sleep_marker()
    outcome = start(loop, master.path, wrapped_command(b"(%s); echo never" % spelled_apart(marker)),
                    close_stdin=False)
    run_until(loop, lambda: outcome.opened and cluster.remote_processes(marker))
    # A grace long enough for a loaded machine: what is tested is that EOF
    # alone makes the wrapper stop the job and give a status (giving up on
    # a master that does not answer is tested below).
    outcome.attempt.stop(grace=60)
    run_until(loop, lambda: outcome.result is not None)
    assert outcome.result[0] == "exit", (outcome.result, outcome.stderr)
    assert outcome.result[1] != 0
    assert outcome.stdout == b""
    assert cluster.remote_processes_left(marker) == []


# -- when the master fails ------------------------------------------------------

def test_master_killed_mid_job_is_a_lost_connection(loop, own_master, cluster):
    marker = sleep_marker()
    outcome = start(loop, own_master.path, wrapped_command(spelled_apart(marker)),
                    close_stdin=False)
    run_until(loop, lambda: outcome.opened and cluster.remote_processes(marker))
    os.kill(own_master.pid, signal.SIGKILL)
    run_until(loop, lambda: outcome.result is not None)
    assert outcome.result[0] is MuxError.CONNECTION_LOST
    # sshd saw the connection go; the wrapper stopped the job.
    assert cluster.remote_processes_left(marker) == []
    # The socket file is still there, and nothing listens on it.
    [again] = run_mux(loop, own_master.path, [b"true"])
    assert again.result[0] is MuxError.CONNECT_FAILED
    assert "refused" in again.result[1].lower()


def test_stop_gives_up_on_a_master_that_does_not_answer(loop, own_master, cluster):
    marker = sleep_marker()
    outcome = start(loop, own_master.path, wrapped_command(spelled_apart(marker)),
                    close_stdin=False)
    run_until(loop, lambda: outcome.opened and cluster.remote_processes(marker))
    pid = own_master.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        outcome.attempt.stop(grace=0.3)
        run_until(loop, lambda: outcome.result is not None)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert outcome.result[0] is MuxError.ABANDONED
    # Once it runs again, the master sees stdin EOF (or its client gone)
    # and the job is stopped all the same.
    assert cluster.remote_processes_left(marker) == []


def check_alive(loop, path, reply_timeout):
    said = []
    AliveCheck(loop, path, reply_timeout, lambda pid, why: said.append((pid, why)))
    run_until(loop, lambda: said)
    return said[0]


def test_alive_check_gives_the_pid_ssh_check_shows(loop, master):
    assert check_alive(loop, master.path, 10) == (master.pid, None)


def test_a_stopped_master_fails_the_alive_check_and_new_attempts_in_time(loop, own_master):
    pid = own_master.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        # Its socket still takes connections; only the silence tells.
        said = check_alive(loop, own_master.path, 0.5)
        [attempt] = run_mux(loop, own_master.path, [b"true"], reply_timeout=0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert said == (None, "master unreachable: the master did not answer in 0.5s")
    assert attempt.result == (MuxError.CONNECT_FAILED, "the master did not answer in 0.5s")


def test_terminate_makes_the_master_exit_as_ssh_O_exit_does(loop, own_master):
    pid = own_master.pid
    said = []
    Terminate(loop, own_master.path, 10, said.append)
    run_until(loop, lambda: said)
    assert said == [None]

    def gone():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    wait_until(gone, what="the master to exit")
    assert not os.path.exists(own_master.path)


def test_terminate_of_a_master_that_is_not_there_says_why(loop, tmp_path):
    said = []
    Terminate(loop, str(tmp_path / "no-such-socket"), 1, said.append)
    run_until(loop, lambda: said)
    assert said[0].startswith("master unreachable: ")


def test_terminate_has_protocol_mux_layout():
    assert terminate_packet(7) == struct.pack(">III", 8, 0x10000005, 7)


def test_missing_socket_is_a_connect_failure(loop, tmp_path):
    [outcome] = run_mux(loop, str(tmp_path / "no-such-socket"), [b"true"])
    assert outcome.result[0] is MuxError.CONNECT_FAILED
    assert outcome.stdout == outcome.stderr == b""


def test_refused_session_names_the_masters_reason():
    # sshd with MaxSessions 1: the master's second session is refused by
    # the node, and the master says so.
    with LoopbackCluster(max_sessions=1) as small:
        running = ControlMaster(small)
        loop = EventLoop()
        try:
            first = start(loop, running.path, b"cat", close_stdin=False)
            run_until(loop, lambda: first.opened)
            [second] = run_mux(loop, running.path, [b"echo should-not-run"])
            assert second.result == (MuxError.SESSION_REFUSED, "Session open refused by peer")
            first.attempt.close_stdin()
            run_until(loop, lambda: first.result is not None)
            assert first.result == ("exit", 0)
        finally:
            loop.close()
            running.stop()


# -- fake masters: what a real one never says -----------------------------------

class FakeMaster:
    """A unix socket that answers each connection with ``reply`` (bytes), or
    closes it at once if ``reply`` is None, and records what the client
    sent."""

    def __init__(self, loop, path, reply):
        self.loop = loop
        self.reply = reply
        self.received = bytearray()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(8)
        self.server.setblocking(False)
        self.connections = []
        loop.add_reader(self.server.fileno(), self._accept)

    def _accept(self):
        connection, _ = self.server.accept()
        if self.reply is None:
            connection.close()
            return
        connection.sendall(self.reply)
        connection.setblocking(False)
        self.connections.append(connection)
        self.loop.add_reader(connection.fileno(), lambda: self._read(connection))

    def _read(self, connection):
        data, ancillary, _, _ = connection.recvmsg(4096, socket.CMSG_SPACE(16))
        for level, kind, fds in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                for fd in struct.unpack("%di" % (len(fds) // 4), fds):
                    os.close(fd)
        if data:
            self.received += data
        else:
            self.loop.remove_reader(connection.fileno())

    def close(self):
        for sock in self.connections + [self.server]:
            try:
                self.loop.remove_reader(sock.fileno())
            except (ValueError, KeyError):
                pass
            sock.close()


def _packet(*words, tail=b""):
    payload = b"".join(struct.pack(">I", word) for word in words) + tail
    return struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize("reply, sends_request", [
    (_packet(MUX_MSG_HELLO, 99), False),                     # unknown version
    (_packet(0x12345678, 4), False),                         # not a hello
    (_packet(MUX_MSG_HELLO, 4) + _packet(0x8000000f, 1), True),  # unknown answer
], ids=["version-99", "unknown-first-message", "unknown-answer-to-request"])
def test_a_master_speaking_otherwise_is_a_protocol_mismatch(loop, tmp_path, reply, sends_request):
    fake = FakeMaster(loop, str(tmp_path / "s"), reply)
    try:
        [outcome] = run_mux(loop, str(tmp_path / "s"), [b"echo hi"])
    finally:
        fake.close()
    assert outcome.result[0] is MuxError.PROTOCOL_MISMATCH
    assert not outcome.opened
    # No request goes to a master that did not say version 4.
    assert bytes(fake.received).startswith(hello_packet())
    assert (len(fake.received) > len(hello_packet())) == sends_request


def test_an_unanswered_session_request_is_a_lost_connection_after_the_reply_timeout(
        loop, tmp_path):
    # The request and its fds have gone: the job may have started.
    fake = FakeMaster(loop, str(tmp_path / "s"), _packet(MUX_MSG_HELLO, 4))
    try:
        [outcome] = run_mux(loop, str(tmp_path / "s"), [b"true"], reply_timeout=0.3)
    finally:
        fake.close()
    assert outcome.result == (MuxError.CONNECTION_LOST, "the master did not answer in 0.3s")


def test_a_master_that_answers_the_alive_check_otherwise_is_not_alive(loop, tmp_path):
    fake = FakeMaster(loop, str(tmp_path / "s"),
                      _packet(MUX_MSG_HELLO, 4) + _packet(0x80000003, 1, tail=b"\0\0\0\0"))
    try:
        pid, why = check_alive(loop, str(tmp_path / "s"), 10)
    finally:
        fake.close()
    assert pid is None and why.startswith("protocol mismatch: ")
    assert bytes(fake.received) == hello_packet() + alive_check_packet(1)


def test_a_master_that_closes_before_its_hello_is_unreachable(loop, tmp_path):
    fake = FakeMaster(loop, str(tmp_path / "s"), None)
    try:
        [outcome] = run_mux(loop, str(tmp_path / "s"), [b"true"])
    finally:
        fake.close()
    assert outcome.result[0] is MuxError.CONNECT_FAILED


@pytest.mark.parametrize("answer, result", [
    (_packet(MUX_MSG_HELLO, 99), MuxError.PROTOCOL_MISMATCH),
    (b"", MuxError.CONNECT_FAILED),
], ids=["version-99", "no-hello"])
def test_a_master_that_hangs_up_before_reading_our_hello_is_judged_by_its_answer(
        loop, tmp_path, monkeypatch, answer, result):
    # On a loaded machine the master can accept, answer and close between
    # clstr's connect and its first write, which then fails (EPIPE): what
    # the master said, not the broken pipe, tells what happened.  Nothing
    # ran either way, so neither is a lost connection.
    path = str(tmp_path / "s")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    real_hello_packet = muxclient.hello_packet

    def master_answers_and_hangs_up_first():
        connection, _ = server.accept()
        connection.sendall(answer)
        connection.close()
        return real_hello_packet()

    monkeypatch.setattr(muxclient, "hello_packet", master_answers_and_hangs_up_first)
    try:
        [outcome] = run_mux(loop, path, [b"true"])
    finally:
        server.close()
    assert outcome.result[0] is result, outcome.result
    assert not outcome.opened


# -- the wire format ----------------------------------------------------------------

def test_new_session_request_has_protocol_mux_layout():
    packet = new_session_packet(7, b"echo hi", [b"LANG=C"])
    fields = struct.unpack(">IIII", packet[:16])
    assert fields == (len(packet) - 4, 0x10000002, 7, 0)        # length, type, id, reserved ""
    assert struct.unpack(">IIIII", packet[16:36]) == (0, 0, 0, 0, 0xFFFFFFFF)
    assert packet[36:] == (struct.pack(">I", 0) + struct.pack(">I", 7) + b"echo hi"
                           + struct.pack(">I", 6) + b"LANG=C")


def test_alive_check_has_protocol_mux_layout():
    assert alive_check_packet(7) == struct.pack(">III", 8, 0x10000004, 7)


def test_alive_reply_gives_the_masters_pid_and_nothing_else_does():
    assert alive_reply_pid(struct.pack(">III", 0x80000005, 7, 4242), 7) == 4242
    for payload in (struct.pack(">III", 0x80000005, 8, 4242),     # another request's
                    struct.pack(">II", 0x80000005, 7),            # no pid
                    struct.pack(">III", 0x80000003, 7, 0)):       # a failure
        with pytest.raises(MalformedMessage):
            alive_reply_pid(payload, 7)


def test_nul_in_a_command_is_refused_before_anything_is_sent(loop, tmp_path):
    with pytest.raises(ValueError):
        new_session_packet(1, b"echo a\0b")
    open_fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError):
        MuxAttempt(loop, str(tmp_path / "s"), b"echo a\0b", None, None, None)
    assert len(os.listdir("/proc/self/fd")) == open_fds


def test_packets_are_split_whole_and_oversized_ones_refused():
    buffer = bytearray(_packet(1, 4) + _packet(0x80000004, 2, 3)[:-1])
    assert split_packets(buffer) == [struct.pack(">II", 1, 4)]
    assert len(buffer) == 15
    with pytest.raises(MalformedMessage):
        split_packets(bytearray(struct.pack(">I", 10 * 1024 * 1024) + b"xxxx"))


def test_stale_socket_file_is_a_connect_failure(loop, tmp_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "s"))  # bound, never listening: refused
    try:
        [outcome] = run_mux(loop, str(tmp_path / "s"), [b"true"])
    finally:
        stale.close()
    assert outcome.result[0] is MuxError.CONNECT_FAILED


def test_frames_sent_before_a_fall_back_reach_the_session_that_takes_over(loop, tmp_path):
    # A worker's setup and first job frames go as soon as its session is
    # asked for.  If the mux client cannot reach the master, they are in a
    # pipe the master never took: the ssh client taking over must get them,
    # or the worker waits for a job that never comes.
    class Carrier:
        def carry(self, session):
            pass

        def drop(self, session):
            pass

    class TakingOver:
        def __init__(self):
            self.sent = []

        def send(self, data):
            self.sent.append(data)

    taking_over = TakingOver()
    fell_back = []

    def fall_back(error, detail):
        fell_back.append(error)
        return taking_over
    session = MuxSession(loop, str(tmp_path / "no-master"), b"true", None, fall_back, None,
                         Carrier())
    session.send(b"o setup\n")
    session.send(b"j 1 1 'true'\n")
    run_until(loop, lambda: fell_back, timeout=30)
    session.send(b"j 2 2 'true'\n")
    assert fell_back == [MuxError.CONNECT_FAILED]
    assert taking_over.sent == [b"o setup\n", b"j 1 1 'true'\n", b"j 2 2 'true'\n"]
