"""clstr's own OpenSSH multiplexing client: a job through a ControlMaster
without a local ssh process.

``ssh -S socket host cmd`` forks and execs a whole ssh (config parse, key
loading, mux handshake) only to hand three file descriptors to the master and
wait.  This module does the handing itself, on the control socket, inside
clstr's event loop.  The protocol is OpenSSH's PROTOCOL.mux, version 4 (all
releases since 5.x; checked against 9.2p1's mux.c):

- every message is ``uint32 length`` + payload; a payload starts with a
  ``uint32`` type; strings are ``uint32 length`` + bytes;
- both ends send ``MUX_MSG_HELLO`` with their version.  The master sends its
  own as soon as it accepts, and drops a client whose version it does not
  know; a client must likewise refuse a master whose version it does not know;
- ``MUX_C_NEW_SESSION`` carries the command, then the client passes stdin,
  stdout and stderr, *each in a message of its own* with one byte of data and
  the fd as SCM_RIGHTS.  The master reads the request to its exact last byte
  and then blocks in ``recvmsg`` for each fd, so the fds must follow the
  request at once;
- the master answers ``MUX_S_SESSION_OPENED`` (or ``MUX_S_FAILURE`` /
  ``MUX_S_PERMISSION_DENIED`` with a reason), later ``MUX_S_EXIT_MESSAGE``
  with the remote exit status, and closes the connection once the session's
  channel is gone;
- ``MUX_C_ALIVE_CHECK`` (after the hellos, on a connection of its own) is
  answered at once with ``MUX_S_ALIVE`` and the master's pid: the pid of the
  master that went to the background, not of the ssh clstr started.

Three things the protocol leaves to the client:

- **The exit message comes before the output.**  sshd sends the exit status
  when the command exits, while its output may still be on the way; the
  master closes the connection only after it has written everything to the
  passed pipes and closed them.  So a session ends when the master closes the
  connection (that is what ``ssh``'s own mux client waits for), and a caller
  that reads the pipes must also read them to EOF.  ``MuxAttempt`` does both.
  Closing the control connection earlier makes the master drop the session
  and lose output.
- **No exit message means the connection failed.**  The master says nothing
  when it dies or loses its connection: the control socket just closes.  sshd
  also sends no exit status for a command killed by a signal, but under
  clstr's remote wrapper the command is a shell that always exits with a
  status, so a missing one means the master or its connection went away.
- **There is no way to signal a session.**  Version 4 has no message for it
  (PROTOCOL.mux lists "signals via mux" as a to-do; the client requests are
  HELLO, NEW_SESSION, ALIVE_CHECK, TERMINATE (the whole master),
  OPEN_FWD/CLOSE_FWD, NEW_STDIO_FWD, STOP_LISTENING and PROXY).  A job is
  stopped by closing the write end of its stdin pipe: the master forwards
  the EOF and the remote wrapper's watcher stops the job (see ``transport/wrapper.py``).
  Dropping the control connection also ends the session (the master closes
  the channel), but takes the exit status and any unread output with it.
"""

import array
import os
import socket
import struct
import time

from ..failures import MuxError
from ..limits import out_of_resources
from .child import READ_SIZE, OutputPipes
from .interface import StdinWriter, stdin_ends, write_after

# Protocol numbers, from PROTOCOL.mux section 11 (same in mux.c, 9.2p1).
MUX_MSG_HELLO = 0x00000001
MUX_C_NEW_SESSION = 0x10000002
MUX_C_ALIVE_CHECK = 0x10000004
MUX_C_TERMINATE = 0x10000005
MUX_S_OK = 0x80000001
MUX_S_PERMISSION_DENIED = 0x80000002
MUX_S_FAILURE = 0x80000003
MUX_S_EXIT_MESSAGE = 0x80000004
MUX_S_ALIVE = 0x80000005
MUX_S_SESSION_OPENED = 0x80000006
MUX_S_TTY_ALLOC_FAIL = 0x80000008
MUX_PROTOCOL_VERSION = 4
# "escape char" value that means none (we never ask for a tty anyway).
NO_ESCAPE_CHAR = 0xFFFFFFFF
# The master drops a peer whose packet is longer than this
# (CHANNEL_MUX_MAX_PACKET); we hold the master to the same bound.
MAX_PACKET = 256 * 1024

# A full listen backlog (the master accepts 64 pending connections) makes a
# non-blocking AF_UNIX connect fail with EAGAIN; we retry this often ...
CONNECT_RETRY = 0.01
# ... for this long before calling the master unreachable.
CONNECT_TIMEOUT = 10.0
# After the master has closed the connection its pipe ends are closed too,
# so EOF is due at once; this bounds the wait should anything else hold them.
PIPE_EOF_GRACE = 2.0

_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)





# -- wire format -------------------------------------------------------------

def _u32(value):
    return struct.pack(">I", value)


def _string(data):
    return _u32(len(data)) + data


def _packet(payload):
    return _u32(len(payload)) + payload


def hello_packet():
    """Our MUX_MSG_HELLO: version 4, no extensions."""
    return _packet(_u32(MUX_MSG_HELLO) + _u32(MUX_PROTOCOL_VERSION))


def new_session_packet(request_id, command, env=()):
    """MUX_C_NEW_SESSION for ``command`` (bytes) without tty, X11, agent or
    subsystem, and with ``env`` ("NAME=value" bytes; the master forwards only
    names its SendEnv allows).  Raises ValueError for a NUL byte, which the
    master's C strings cannot carry."""
    refuse_nul(command, env)
    payload = b"".join([
        _u32(MUX_C_NEW_SESSION), _u32(request_id),
        _string(b""),  # reserved
        _u32(0), _u32(0), _u32(0), _u32(0),  # tty, X11, agent, subsystem
        _u32(NO_ESCAPE_CHAR),
        _string(b""),  # terminal type: unused without a tty
        _string(command),
    ] + [_string(variable) for variable in env])
    return _packet(payload)


def refuse_nul(command, env=()):
    """Raises ValueError if ``command`` or ``env`` (bytes) hold a NUL byte."""
    for text in (command,) + tuple(env):
        if b"\0" in text:
            raise ValueError("a NUL byte cannot pass through a mux session")


def alive_check_packet(request_id):
    """MUX_C_ALIVE_CHECK: the master answers MUX_S_ALIVE with its pid."""
    return _packet(_u32(MUX_C_ALIVE_CHECK) + _u32(request_id))


def terminate_packet(request_id):
    """MUX_C_TERMINATE: the master answers MUX_S_OK and exits."""
    return _packet(_u32(MUX_C_TERMINATE) + _u32(request_id))


class MalformedMessage(Exception):
    """A message from the master that cannot be a mux message (or not the
    one that was due)."""


class _Fields:
    """Reads SSH wire fields from one payload; raises MalformedMessage past its end."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data):
        self._data = data
        self._pos = 0

    def u32(self):
        if self._pos + 4 > len(self._data):
            raise MalformedMessage("message too short")
        value, = struct.unpack_from(">I", self._data, self._pos)
        self._pos += 4
        return value

    def string(self):
        length = self.u32()
        if self._pos + length > len(self._data):
            raise MalformedMessage("string runs past the message")
        value = bytes(self._data[self._pos:self._pos + length])
        self._pos += length
        return value


def _reply(payload, kind, request_id, request):
    """``payload``'s fields after its kind and request id, which must be
    ``kind`` and ``request_id``; raises MalformedMessage otherwise (naming
    ``request``, the question asked)."""
    fields = _Fields(payload)
    answered_kind = fields.u32()
    if answered_kind != kind:
        raise MalformedMessage("master answered the %s with 0x%08x" % (request, answered_kind))
    answered = fields.u32()
    if answered != request_id:
        raise MalformedMessage("master answered request %d, not %d" % (answered, request_id))
    return fields


def alive_reply_pid(payload, request_id):
    """The master's pid from ``payload``, its answer to
    ``alive_check_packet(request_id)``.  Raises MalformedMessage for any
    other message."""
    return _reply(payload, MUX_S_ALIVE, request_id, "alive check").u32()


def check_ok_reply(payload, request_id):
    """Raises MalformedMessage unless ``payload`` is MUX_S_OK for
    ``request_id`` (MUX_S_PERMISSION_DENIED: a master asking its user for
    each request, which clstr never configures)."""
    _reply(payload, MUX_S_OK, request_id, "request to exit")


def split_packets(buffer):
    """Complete payloads at the start of ``buffer`` (a bytearray, consumed
    as they are taken).  Raises MalformedMessage for a length no master sends."""
    payloads = []
    while len(buffer) >= 4:
        length, = struct.unpack_from(">I", buffer)
        if length < 4 or length > MAX_PACKET:
            raise MalformedMessage("packet length %d" % length)
        if len(buffer) < 4 + length:
            break
        payloads.append(bytes(buffer[4:4 + length]))
        del buffer[:4 + length]
    return payloads


# -- one control connection ------------------------------------------------------

class _Connection:
    """One control connection to the master at ``control_path``, driven by
    ``loop`` (clstr.loop.EventLoop): it connects (retrying while the listen
    backlog is full), exchanges hellos, sends the subclass's ``_request()``
    followed by ``fds`` (each in a message of its own, see the module's
    docstring; closed here once passed, or when it gives up), and hands every
    later payload to ``_answer(payload)``.

    ``reply_timeout`` (seconds; None: no limit) bounds each wait for a reply
    the master owes at once: its hello, then the answer to the request (the
    subclass calls ``_replied()`` when it has it).  A stopped or hung master
    still has its socket listening, so the connect succeeds and only its
    silence tells.  No deadline ever applies to a session's exit message: a
    job may run for days.  The subclass reports through ``_report_error``."""

    REQUEST_ID = 1

    def __init__(self, loop, control_path, fds, reply_timeout, connect_timeout):
        self._loop = loop
        self._path = control_path
        self._fds_to_pass = list(fds)
        self._sock = None
        self._fd = None
        self._outgoing = bytearray()
        self._incoming = bytearray()
        self._writing = False
        self._pass_fds_now = False
        # connecting -> hello (waiting for the master's) -> requested, then
        # the subclass's own states
        self._state = "connecting"
        self._finished = False
        self._reply_timeout = reply_timeout
        self._reply_timer = None
        self._connect_timeout = connect_timeout
        self._connect_started = time.monotonic()
        # The socket is made here, so that running out of fds raises OSError
        # to the caller (nothing is started yet), as the pipes do.
        try:
            self._unconnected = _new_socket()
        except OSError:
            self._close_fds_to_pass()
            raise
        # Connect from the loop, so that no callback ever runs while the
        # caller is still in this constructor.
        self._timer = loop.call_later(0, self._connect)

    @property
    def finished(self):
        """True once the connection has ended or been closed: no callback follows."""
        return self._finished

    def close(self):
        """Drop the connection now, without another callback."""
        self._finished = True
        for timer in (self._timer, self._reply_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._reply_timer = None
        if self._unconnected is not None:
            self._unconnected.close()
            self._unconnected = None
        if self._sock is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._sock.close()
            self._sock = None
        self._close_fds_to_pass()

    # -- connecting ------------------------------------------------------------

    def _connect(self):
        self._timer = None
        sock, self._unconnected = self._unconnected, None
        try:
            if sock is None:
                sock = _new_socket()
            sock.connect(self._path)
        except (BlockingIOError, InterruptedError):
            # A full backlog (EAGAIN): AF_UNIX gives no writable event for
            # this, so try again shortly on a fresh socket.
            sock.close()
            self._retry_connect()
            return
        except OSError as error:
            if sock is None and out_of_resources(error):
                # No fd for the fresh socket yet: as good as a full backlog.
                self._retry_connect()
                return
            if sock is not None:
                sock.close()
            self._finish_error(MuxError.CONNECT_FAILED, _describe(error))
            return
        self._sock = sock
        self._fd = sock.fileno()
        self._state = "hello"
        self._loop.add_reader(self._fd, self._readable)
        self._expect_reply()
        self._send(hello_packet())

    def _retry_connect(self):
        if time.monotonic() - self._connect_started >= self._connect_timeout:
            self._finish_error(MuxError.CONNECT_FAILED,
                               "master not accepting connections for %gs" % self._connect_timeout)
            return
        self._timer = self._loop.call_later(CONNECT_RETRY, self._connect)

    # -- deadlines ---------------------------------------------------------------

    def _expect_reply(self):
        self._replied()
        if self._reply_timeout is not None and not self._finished:
            self._reply_timer = self._loop.call_later(self._reply_timeout, self._no_reply)

    def _replied(self):
        if self._reply_timer is not None:
            self._reply_timer.cancel()
            self._reply_timer = None

    def _no_reply(self):
        self._reply_timer = None
        detail = "the master did not answer in %gs" % self._reply_timeout
        if self._state == "hello":
            self._finish_error(MuxError.CONNECT_FAILED, detail)
        else:
            self._lost(detail)

    # -- sending ---------------------------------------------------------------

    def _send(self, data, then_fds=False):
        self._outgoing += data
        self._pass_fds_now = self._pass_fds_now or then_fds
        self._flush()

    def _flush(self):
        try:
            while self._outgoing:
                sent = self._sock.send(self._outgoing, _SEND_FLAGS)
                del self._outgoing[:sent]
            # Emptied by deletion, a bytearray keeps its buffer: a fresh one
            # holds no copy of the request for the connection's life.
            self._outgoing = bytearray()
            # The master reads the request, then blocks in recvmsg for each
            # fd: they must follow straight away, one message each.
            while self._pass_fds_now and self._fds_to_pass:
                fd = self._fds_to_pass[0]
                self._sock.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", [fd]))], _SEND_FLAGS)
                self._fds_to_pass.pop(0)
                # The master holds its own reference now; ours must go so
                # that the caller's pipes can reach EOF.
                os.close(fd)
        except (BlockingIOError, InterruptedError):
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._flush)
            return
        except OSError as error:
            self._write_failed("cannot write to the master: %s" % _describe(error))
            return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _close_fds_to_pass(self):
        while self._fds_to_pass:
            fd = self._fds_to_pass.pop()
            try:
                os.close(fd)
            except OSError:
                pass

    # -- receiving -------------------------------------------------------------

    def _readable(self):
        data, reason = self._receive()
        if data is None:
            return
        if not data:
            self._closed_by_master(reason)
            return
        self._take(data)

    def _receive(self):
        """(data, None); (b"", reason) at EOF or reset; (None, None) when
        nothing is there yet."""
        try:
            return self._sock.recv(READ_SIZE), None
        except (BlockingIOError, InterruptedError):
            return None, None
        except OSError as error:  # ECONNRESET: as good as EOF
            return b"", _describe(error)

    def _take(self, data):
        self._incoming += data
        try:
            for payload in split_packets(self._incoming):
                self._handle(payload)
                if self._finished:
                    return
        except MalformedMessage as error:
            self._misunderstood("malformed message from the master (%s)" % error)

    def _write_failed(self, detail):
        # A master that does not take our protocol may answer and close
        # before reading what we sent: its answer, not our broken pipe,
        # says what happened.
        while not self._finished:
            data, _ = self._receive()
            if not data:
                break
            self._take(data)
        if self._finished:
            return
        if self._state == "hello":
            self._finish_error(MuxError.CONNECT_FAILED, detail)
        else:
            self._lost(detail)

    def _handle(self, payload):
        if self._state != "hello":
            self._answer(payload)
            return
        fields = _Fields(payload)
        kind = fields.u32()
        if kind != MUX_MSG_HELLO:
            self._misunderstood("master sent message 0x%08x instead of hello" % kind)
            return
        version = fields.u32()
        if version != MUX_PROTOCOL_VERSION:
            self._misunderstood("master speaks mux protocol version %d, not %d"
                                % (version, MUX_PROTOCOL_VERSION))
            return
        # Extensions (name/value string pairs) may follow (OpenSSH 9.8's
        # "info"); we use none, and the master ignores ours likewise.
        self._state = "requested"
        self._expect_reply()
        self._send(self._request(), then_fds=True)

    def _misunderstood(self, detail):
        # Before the request was answered nothing ran, and the caller may
        # rerun the job the old way; after, the job may have run in part,
        # and what ends the attempt is the lost connection.
        if self._state in ("hello", "requested"):
            self._finish_error(MuxError.PROTOCOL_MISMATCH, detail)
        else:
            self._lost(detail)

    def _closed_by_master(self, reason):
        if self._state == "hello":
            self._finish_error(MuxError.CONNECT_FAILED,
                               reason or "master closed the connection before its hello")
        else:
            self._lost(reason or "master closed the connection before answering")

    def _lost(self, detail):
        self._finish_error(MuxError.CONNECTION_LOST, detail)

    def _finish_error(self, kind, detail):
        if self._finished:
            return
        self.close()
        self._report_error(kind, detail)


def _new_socket():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


def _describe(error):
    return error.strerror or str(error)


# -- one session ---------------------------------------------------------------

class ControlSession(_Connection):
    """One command run through the ControlMaster listening at
    ``control_path``, driven by ``loop`` (clstr.loop.EventLoop).

    ``stdin_fd``, ``stdout_fd`` and ``stderr_fd`` are handed to the master,
    which reads and writes them directly; the session owns them from now on
    and closes its copies as soon as the master holds them (or when it gives
    up), so the caller's pipes see EOF when the master is done with them.
    Pass ``os.dup(fd)`` to keep one.

    Callbacks, always from the loop, never from the constructor:
    ``on_opened()`` once the master has opened the session (the command is
    starting on the node); then exactly one of ``on_exit(code)``, the
    command's exit status (0-255; 255 is the command's own, never an ssh
    error), once the master has closed the connection and so has finished
    with the fds, or ``on_error(kind, detail)``, ``kind`` a ``MuxError``
    and ``detail`` a short text.  ``reply_timeout``: see ``_Connection``
    (no answer to the hello is ``CONNECT_FAILED``, to the session request
    ``CONNECTION_LOST``).  Raises ValueError for a NUL byte in ``command``
    or ``env``."""

    def __init__(self, loop, control_path, command, stdin_fd, stdout_fd, stderr_fd,
                 on_opened, on_exit, on_error, env=(), connect_timeout=CONNECT_TIMEOUT,
                 reply_timeout=None):
        fds = [stdin_fd, stdout_fd, stderr_fd]
        try:
            refuse_nul(command, env)
        except ValueError:
            for fd in fds:
                os.close(fd)
            raise
        # The request is built when it is sent: hundreds of sessions may be
        # waiting for their masters' hellos at once, a worker's command is
        # kilobytes, and one text may serve them all.
        self._command, self._env = command, env
        self._on_opened = on_opened
        self._on_exit = on_exit
        self._on_error = on_error
        self._session_id = None
        self._exit_code = None
        _Connection.__init__(self, loop, control_path, fds, reply_timeout, connect_timeout)

    @property
    def opened(self):
        """True once the master has opened the session."""
        return self._session_id is not None

    @property
    def exit_code(self):
        """The command's exit status once the master has sent it, else None.
        The session is not over yet then: output may still be on its way."""
        return self._exit_code

    def close(self):
        """Drop the session now, without another callback.  If it was open,
        the master then closes its channel: the node sees EOF on the
        command's stdin and a broken stdout, and the exit status is lost."""
        _Connection.close(self)

    def _request(self):
        # Asked for once; a session lives as long as its job (or a worker,
        # the whole run), and its command need not.
        packet = new_session_packet(self.REQUEST_ID, self._command, self._env)
        self._command = self._env = None
        return packet

    def _answer(self, payload):
        fields = _Fields(payload)
        kind = fields.u32()
        if self._state == "requested":
            request_id = fields.u32()
            if request_id != self.REQUEST_ID:
                self._misunderstood("master answered request %d, not %d"
                                    % (request_id, self.REQUEST_ID))
                return
            if kind == MUX_S_SESSION_OPENED:
                self._replied()
                self._session_id = fields.u32()
                self._state = "open"
                self._on_opened()
            elif kind in (MUX_S_FAILURE, MUX_S_PERMISSION_DENIED):
                reason = fields.string().decode("utf-8", "replace")
                self._finish_error(MuxError.SESSION_REFUSED, reason)
            else:
                self._misunderstood("master answered the session request with 0x%08x" % kind)
            return
        if kind == MUX_S_EXIT_MESSAGE:
            session_id, code = fields.u32(), fields.u32()
            if session_id == self._session_id and self._exit_code is None:
                self._exit_code = code
        # Anything else once the command runs (MUX_S_TTY_ALLOC_FAIL, which
        # we never provoke, or a notice of a later master) is no reason to
        # lose a job that is running: the exit status and the close of the
        # connection are all we wait for.

    def _closed_by_master(self, reason):
        if self._state == "open" and self._exit_code is not None:
            code = self._exit_code
            self.close()
            self._on_exit(code)
        elif self._state == "open":
            self._lost(reason or "master closed the session without an exit status")
        elif self._state == "requested":
            self._lost(reason or "master closed the connection before opening the session")
        else:
            _Connection._closed_by_master(self, reason)

    def _report_error(self, kind, detail):
        self._on_error(kind, detail)


# -- a question to the master itself ----------------------------------------------

class _MasterRequest(_Connection):
    """One request about the master itself (no fds, no session), answered
    to ``on_done``; ``reply_timeout`` bounds the connect, the hello and the
    answer alike: a backlog that stays full is one more sign of a master
    not answering."""

    def __init__(self, loop, control_path, reply_timeout, on_done):
        self._on_done = on_done
        _Connection.__init__(self, loop, control_path, (), reply_timeout, reply_timeout)


class AliveCheck(_MasterRequest):
    """Asks the master at ``control_path``, on a connection of its own,
    whether it answers (MUX_C_ALIVE_CHECK, as ``ssh -O check`` does), and
    calls ``on_done(pid, None)`` with the master's pid, or
    ``on_done(None, why)`` if it did not answer within ``reply_timeout``
    seconds (for each of its hello and its answer), cannot be reached or
    answered otherwise.  Always from the loop."""

    def _request(self):
        return alive_check_packet(self.REQUEST_ID)

    def _answer(self, payload):
        pid = alive_reply_pid(payload, self.REQUEST_ID)
        self.close()
        self._on_done(pid, None)

    def _report_error(self, kind, detail):
        self._on_done(None, "%s: %s" % (kind.value, detail))


class Terminate(_MasterRequest):
    """Asks the master at ``control_path`` to exit (MUX_C_TERMINATE, what
    ``ssh -O exit`` sends: an ssh started for each of hundreds of masters
    would cost the end of a run more than its jobs), and calls
    ``on_done(None)`` once it has said yes (or closed the connection on
    the request), or ``on_done(why)``.  Always from the loop."""

    def _request(self):
        return terminate_packet(self.REQUEST_ID)

    def _answer(self, payload):
        check_ok_reply(payload, self.REQUEST_ID)
        self.close()
        self._on_done(None)

    def _report_error(self, kind, detail):
        if kind is MuxError.CONNECTION_LOST and self._state == "requested":
            # The master may exit before its answer leaves (mux.c says so):
            # ssh -O exit takes that close for a yes, and so does clstr.
            self._on_done(None)
        else:
            self._on_done("%s: %s" % (kind.value, detail))


# -- one attempt: a session and its pipes ------------------------------------

class MuxAttempt:
    """One job run through the master at ``control_path``, with pipes of its
    own: the master gets the read end of a fresh stdin pipe and the write ends
    of fresh stdout and stderr pipes; clstr keeps the other ends.

    ``on_output(stream, data)`` gets raw chunks (stream 1 or 2) as they
    arrive.  The attempt ends with exactly one of ``on_exit(code)`` (the
    command's exit status) or ``on_error(kind, detail)`` (a ``MuxError``, see
    there), and only once the master has closed the connection *and* both
    output pipes have reached EOF: the exit status arrives before the output
    has drained.  ``on_opened()``, if given, runs when the command starts.
    ``reply_timeout``: how long the master has to answer the hello and the
    session request (``ControlSession``); None: as long as it takes.

    ``stop()`` is how a job is stopped: it closes the stdin pipe, the remote
    wrapper's watcher sees EOF and stops the job, and the attempt ends
    normally with the wrapper's status.  ``pause()``/``resume()`` stop and
    restart reading, as ``ChildProcess`` does.  ``stdin_fd`` is the write end
    of the stdin pipe (None once closed); ``stdin_data`` (bytes, or None) is
    written to it first, as the master takes it (a big job's command); a
    local file (interface.stdin_ends) is the command's stdin instead, read
    by the master itself (a --send copy's).
    Raises OSError if the pipes cannot be made (out of fds), ValueError for a
    NUL byte in ``command``; either way nothing is left open."""

    def __init__(self, loop, control_path, command, on_output, on_exit, on_error,
                 on_opened=None, env=(), reply_timeout=None, stdin_data=None):
        self._loop = loop
        self._writer = None
        self._on_exit = on_exit
        self._on_error = on_error
        self._on_opened = on_opened
        self._result = None
        self._timer = None
        self._reported = False
        self._pipes = OutputPipes(loop, on_output, self._maybe_finish)
        try:
            stdin_read, self.stdin_fd = stdin_ends(stdin_data)
        except BaseException:
            self._pipes.close()
            self._pipes.close_write_ends()
            raise
        # The session closes the ends it passes (even when it raises); from
        # here on only the master holds them.
        passed = [stdin_read] + self._pipes.write_ends
        self._pipes.write_ends = []
        try:
            self.session = ControlSession(loop, control_path, command, *passed,
                                      on_opened=self._opened, on_exit=self._session_exited,
                                      on_error=self._session_failed, env=env,
                                      reply_timeout=reply_timeout)
        except BaseException:
            self._pipes.close()
            self._close_stdin()
            raise
        self._pipes.watch()
        if stdin_data and self.stdin_fd is not None:
            self._writer = StdinWriter(loop, self.stdin_fd, stdin_data)

    @property
    def running(self):
        return not self._reported

    def close_stdin(self):
        """EOF on the command's stdin, nothing more."""
        self._close_stdin()

    def send(self, data):
        """Write ``data`` on the command's stdin, after what was sent
        before (a worker's frames, transport/worker.py)."""
        if self.stdin_fd is not None:
            self._writer = write_after(self._loop, self._writer, self.stdin_fd, data)

    def stop(self, grace):
        """Stop the job: close stdin (EOF for the remote wrapper).  If the
        session has not ended ``grace`` seconds later (a hung link, a
        master that is not answering), drop it and end the attempt with
        ``MuxError.ABANDONED``."""
        self._close_stdin()
        if self._result is None and self._timer is None:
            self._timer = self._loop.call_later(grace, lambda: self._abandon(grace))

    def close(self):
        """Release everything now, without another callback."""
        self._reported = True
        self._cancel_timer()
        self.session.close()
        self._close_stdin()
        self._pipes.close()

    def pause(self):
        self._pipes.pause()

    def resume(self):
        self._pipes.resume()
        self._maybe_finish()

    # -- the session's news ------------------------------------------------------

    def _opened(self):
        if self._on_opened is not None:
            self._on_opened()

    def _session_exited(self, code):
        self._ended(("exit", code))

    def _session_failed(self, kind, detail):
        self._ended(("error", kind, detail))

    def _ended(self, result):
        self._cancel_timer()
        self._result = result
        self._maybe_finish()

    def _abandon(self, grace):
        self._timer = None
        self.session.close()
        # The master may be hung: take what the pipes hold and go.
        self._pipes.drain()
        self._result = ("error", MuxError.ABANDONED,
                        "no exit status %gs after stdin was closed" % grace)
        self._maybe_finish()

    # -- the end -------------------------------------------------------------

    def _close_stdin(self):
        if self._writer is not None:
            self._writer.cancel()
        if self.stdin_fd is not None:
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def _cancel_timer(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _maybe_finish(self):
        if self._result is None or self._reported:
            return
        if self._pipes.open:
            # The master has closed its ends, so EOF is due; bound the wait
            # anyway, but never while the caller holds us paused.
            if self._timer is None and not self._pipes.paused:
                self._timer = self._loop.call_later(PIPE_EOF_GRACE, self._give_up_on_eof)
            return
        self._reported = True
        self._cancel_timer()
        self._close_stdin()
        if self._result[0] == "exit":
            self._on_exit(self._result[1])
        else:
            self._on_error(self._result[1], self._result[2])

    def _give_up_on_eof(self):
        self._timer = None
        if self._pipes.paused:
            return
        self._pipes.drain()
        self._maybe_finish()
