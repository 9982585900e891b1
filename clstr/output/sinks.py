"""Where job output goes: whole lines, in order, with bounded buffering.

Each job stream is cut into lines by a ``LineAssembler``; complete lines are
appended to a ``Sink`` (clstr's stdout or stderr, or a file).  Because the loop
is single-threaded and a sink is one FIFO buffer, a line from one job is never
split by another job's bytes.  Bytes are never decoded.
"""

import collections
import errno
import io
import os
import stat
import tempfile

from ..errors import LocalIOError

# Above this many buffered bytes the sink asks for reading to pause; below the
# low mark it asks to resume.  Children then block on their full pipes.
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
# Many short lines are joined into writes of about this size.
COALESCE = 65536


def _take_batch(chunks):
    """Pop in-memory chunks from the left until about COALESCE bytes, joined."""
    batch = []
    size = 0
    while chunks and size < COALESCE and not isinstance(chunks[0], SpillReader):
        chunk = chunks.popleft()
        batch.append(chunk)
        size += len(chunk)
    return b"".join(batch)


def same_file(fd_a, fd_b):
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_sinks(loop, stdout_fd, stderr_fd, names, pressure, stdout_closed, failed):
    """Sinks for jobs' stdout (1), jobs' stderr (2) and clstr's own
    messages (0, on fd 2).  Fds that are the same file share one sink, or
    partial writes to a shared pipe could cut each other's lines.
    ``names``: what a write error names for keys 1 and 2 when they are not
    fds 1 and 2 (the -o/-e files).  A closed stdout pipe is `clstr | head`:
    ``stdout_closed()``; any other reader gone (stderr's, an -e FIFO's) is a
    write error for ``failed(LocalIOError)``, like every other."""
    sinks = {}
    std_names = {1: "stdout", 2: "stderr"}
    for key, fd in ((1, stdout_fd), (2, stderr_fd), (0, 2)):
        for other in sinks.values():
            if same_file(other.fd, fd):
                sinks[key] = other
                break
        else:
            name = std_names.get(fd) or names.get(key, "stderr")
            on_broken = stdout_closed if key == 1 else (
                lambda name=name: failed(LocalIOError(
                    name, OSError(errno.EPIPE, os.strerror(errno.EPIPE)))))
            sinks[key] = Sink(loop, fd, pressure, on_broken, name=name, on_error=failed)
    return sinks


def write_out(loop, sinks, leaving):
    """Let ``loop`` write what ``sinks`` still hold, as slowly as their
    readers take it, until ``leaving()`` says to drop the rest."""
    sinks = set(sinks)
    loop.run_while(lambda: not leaving() and any(sink.pending for sink in sinks))


class Sink:
    """An output fd fed with whole lines from many sources.

    Pipes and sockets are written without blocking, driven by the loop, so a
    slow reader never stalls the loop; terminals and regular files are written
    directly.  ``on_pressure(bool)`` is called with True when the buffer passes
    the high-water mark and False when it has drained; ``on_broken()`` when the
    reader has gone away (EPIPE); ``on_error(LocalIOError)`` when any other
    write error happens (a full disk), with ``name`` ("stdout", a path) as
    the LocalIOError's ``what``; without ``on_error`` the LocalIOError is
    raised.  Either way the sink then drops what it holds and all later
    writes: nothing more can reach that file in order.

    What a pipe's reader has not taken yet stays buffered (``pending``); the
    owner lets the loop run until it is written, so that signals are still
    handled while a slow reader catches up.  ``close()`` drops the rest."""

    def __init__(self, loop, fd, on_pressure=None, on_broken=None, name=None, on_error=None):
        self._loop = loop
        self.fd = fd
        self.name = name or "fd %d" % fd
        self._on_pressure = on_pressure or (lambda pressed: None)
        self._on_broken = on_broken or (lambda: None)
        self._on_error = on_error
        self._chunks = collections.deque()
        self._buffered = 0
        self._pressed = False
        self._writer_armed = False
        self._open_source = None  # source whose last line lacked a newline
        self.broken = False
        self._saved_blocking = None
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            self._saved_blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)
        self._nonblocking = self._saved_blocking is not None
        self.before_write = None  # hook: the status line clears itself

    @property
    def buffered(self):
        return self._buffered

    @property
    def pending(self):
        """True while bytes wait for the reader."""
        return bool(self._chunks)

    def write(self, source, data):
        """Append ``data`` (whole lines, or a final unterminated line) from
        ``source``.  A line left unterminated by one source gets a newline
        before another source writes, so lines are never glued together."""
        if not data or self.broken:
            return
        self._separate_from(source)
        self._open_source = None if data.endswith(b"\n") else source
        self._chunks.append(data)
        self._buffered += len(data)
        self._written()

    def write_spilled(self, source, spill):
        """Append all of a SpillBuffer; its bytes stay on disk until written."""
        if not spill.size or self.broken:
            spill.close()
            return
        # First, as it may fail (a full disk): then nothing is queued that
        # no writer would ever take, and the end of the run cannot hang.
        reader = spill.reader()
        self._separate_from(source)
        self._open_source = None if spill.ends_with_newline else source
        self._chunks.append(reader)
        # Counted now, though it waits on disk: a slow reader must make
        # clstr stop reading its children, or spill files pile up.
        self._buffered += spill.size
        self._written()

    def _separate_from(self, source):
        if self._open_source is not None and self._open_source != source:
            self._chunks.append(b"\n")
            self._buffered += 1
            self._open_source = None

    def _written(self):
        if self._nonblocking:
            if not self._writer_armed:
                self._writer_armed = True
                self._loop.add_writer(self.fd, self._flush)
            if self._buffered > HIGH_WATER and not self._pressed:
                self._pressed = True
                self._on_pressure(True)
        else:
            self._flush()

    def _flush(self):
        if self.before_write:
            self.before_write(self)
        chunks = self._chunks
        try:
            while chunks:
                if isinstance(chunks[0], SpillReader):
                    # Bring the next piece of a spilled buffer into memory.
                    piece = chunks[0].read(COALESCE)
                    if not piece:
                        chunks.popleft().close()
                        continue
                    chunks.appendleft(piece)
                if len(chunks) > 1 and len(chunks[0]) < COALESCE and isinstance(chunks[1], bytes):
                    chunks.appendleft(_take_batch(chunks))
                chunk = chunks[0]
                try:
                    written = os.write(self.fd, chunk)
                except BlockingIOError:
                    break
                self._buffered -= written
                if written == len(chunk):
                    chunks.popleft()
                else:
                    chunks[0] = memoryview(chunk)[written:]
        except OSError as error:
            self._drop()
            if self._pressed:
                # Nothing is buffered any more: let the children be read
                # (and stopped) instead of leaving them blocked.
                self._pressed = False
                self._on_pressure(False)
            if error.errno in (errno.EPIPE, errno.ECONNRESET):
                self._on_broken()
                return
            failure = LocalIOError(self.name, error)
            if self._on_error is None:
                raise failure
            self._on_error(failure)
            return
        if not chunks and self._writer_armed:
            self._writer_armed = False
            self._loop.remove_writer(self.fd)
        if self._pressed and self._buffered < LOW_WATER:
            self._pressed = False
            self._on_pressure(False)

    def _drop(self):
        """Forget what is buffered and everything written from now on."""
        self.broken = True
        for chunk in self._chunks:
            if isinstance(chunk, SpillReader):
                chunk.close()
        self._chunks.clear()
        self._buffered = 0
        if self._writer_armed:
            self._writer_armed = False
            self._loop.remove_writer(self.fd)

    def close(self):
        """Drop what the reader has not taken (the owner runs the loop while
        ``pending`` to write it all; it stops early only when told to leave
        at once) and put the fd's blocking mode back as we found it (the fd
        is shared with whoever started us).  Never blocks."""
        self._drop()
        if self._saved_blocking is not None:
            try:
                os.set_blocking(self.fd, self._saved_blocking)
            except OSError:
                pass


# A job's output in --group mode is kept in memory up to this size, then in
# an unlinked temporary file, so clstr's memory stays bounded.
SPILL_AFTER = 1024 * 1024


def spill_files():
    """Where spilled output waits, as an error message names it."""
    return "a temporary file in %s" % tempfile.gettempdir()


class SpillBuffer:
    """Bytes appended in order, in memory while small (up to ``spill_after``
    bytes), on disk when large."""

    def __init__(self, spill_after=None):
        self._memory = io.BytesIO()
        self._file = None
        self._spill_after = SPILL_AFTER if spill_after is None else spill_after
        self.size = 0
        self.ends_with_newline = True

    def append(self, data):
        if not data:
            return
        if self._file is None and self.size + len(data) > self._spill_after:
            self._file = tempfile.TemporaryFile(prefix="clstr-")
            self._file.write(self._memory.getvalue())
            self._memory = None
        (self._file or self._memory).write(data)
        self.size += len(data)
        self.ends_with_newline = data.endswith(b"\n")

    def append_all(self, other):
        """Append everything in SpillBuffer ``other``, a piece at a time, and
        close it."""
        reader = other.reader()
        try:
            for piece in iter(lambda: reader.read(COALESCE), b""):
                self.append(piece)
        finally:
            reader.close()

    def read_at(self, offset, size):
        """Up to ``size`` bytes from ``offset``, the buffer left as it was
        (still open for appending): a tape of many pieces is read back by
        place (ordering.py)."""
        if self._file is None:
            with self._memory.getbuffer() as view:
                return bytes(view[offset:offset + size])
        self._file.flush()
        return os.pread(self._file.fileno(), size, offset)

    def reader(self):
        """A reader over everything appended; the buffer belongs to it now.
        Raises OSError if what is still buffered cannot be written out (the
        buffer is then closed)."""
        handle = self._file or self._memory
        try:
            handle.seek(0)
        except OSError:
            _close_quietly(handle)
            raise
        return SpillReader(handle)

    def close(self):
        (self._file or self._memory).close()


def _close_quietly(handle):
    try:
        handle.close()  # it flushes, and may fail the same way again
    except OSError:
        pass


class SpillReader:
    """Reads spilled bytes from the start, a piece at a time, for a sink:
    ``handle`` (a SpillBuffer's, or any with ``read(size)`` and ``close()``)
    is closed with it."""

    __slots__ = ("_handle",)

    def __init__(self, handle):
        self._handle = handle

    def read(self, size):
        return self._handle.read(size)

    def close(self):
        self._handle.close()
