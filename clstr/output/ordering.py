"""Job output in job order (-k/--keep-order), in bounded memory.

One job has the turn: the lowest job number still owed.  Its output goes to
the sinks as it comes, in the delivery mode's own way (lines, or the whole
job at once with --group); every later job's output is held until its turn.
A job gives the turn on when it is finished for good: completed, or given up
(``Ordering.finished``).  A job that fails and runs again keeps its place:
what its failed attempt delivered (line mode delivers it, --group drops it)
stays ahead of what the next attempt writes, as without -k.

Which numbers are owed needs no word from the job feed: fresh jobs are
handed out in job order, so when job N opens, every job below N that never
opened never will (``--resume`` skipped it, or its line could not be run).
The turn is only ever waited for from jobs that have opened.

Holding is bounded.  A running attempt holds its output in a SpillBuffer per
sink, as --group does (memory while small, then an unlinked file).  When the
attempt ends, what it held moves onto a tape (``_Tape``): one SpillBuffer
that the held output of many attempts is appended to and read back from by
place, so however many finished jobs wait for a slow one, they cost a few
hundred bytes of memory each, no open file each, and disk for their bytes.
A tape is retired after ``TAPE_BYTES``, and each is closed, its disk freed,
once nothing on it waits any more.
"""

import heapq

from ..errors import LocalIOError
from .sinks import SpillBuffer, SpillReader, spill_files

# A new tape is started once the current one holds this much, so that one
# job waiting for ever cannot keep every later job's bytes on disk.
TAPE_BYTES = 64 * 1024 * 1024


class Ordering:
    """Holds jobs' output until their turn, for ``sinks`` ({1: stdout's,
    2: stderr's}; one Sink object for both when they are the same file)."""

    def __init__(self, sinks):
        self._sinks = sinks
        self._turns = {}  # job number -> _Turn, for jobs opened and not yet past
        self._owed = []  # a heap of those numbers
        self._shelf = _Shelf()
        self._current = None  # the _Turn writing straight to the sinks

    def open(self, seq, mode):
        """An attempt of job ``seq`` starts: ``mode(sinks)`` makes its
        delivery mode over sinks that hold its output until its turn.
        Returns what the attempt's output goes to (``data``, ``close``)."""
        turn = self._turns.get(seq)
        if turn is None:
            turn = self._turns[seq] = _Turn(self._shelf)
            heapq.heappush(self._owed, seq)
            if self._current is None:
                self._advance()
        sinks = {stream: _TurnSink(turn, sink) for stream, sink in self._sinks.items()
                 if stream in (1, 2)}
        return _InTurn(mode(sinks), turn)

    def finished(self, seq):
        """Job ``seq`` will not run again: once its turn has come and gone,
        the next job's comes.  Raises LocalIOError."""
        turn = self._turns.get(seq)
        if turn is None:
            return
        turn.finished = True
        if turn.current:
            self._guarded(self._advance)

    def finish(self):
        """The run's jobs are over: what every job still holds goes out in
        job order, finished or not (as its lines would have without -k).
        Raises LocalIOError."""
        def release_all():
            while self._owed:
                self._turns[heapq.heappop(self._owed)].take_turn()
            self._turns.clear()
        self._guarded(release_all)

    def _advance(self):
        """Give the turn to the lowest job owed, and on past each that is
        finished; what each held goes to the sinks."""
        while self._owed:
            turn = self._turns[self._owed[0]]
            self._current = turn
            turn.take_turn()
            if not turn.finished:
                return
            del self._turns[heapq.heappop(self._owed)]
        self._current = None

    @staticmethod
    def _guarded(release):
        try:
            release()
        except OSError as error:
            raise LocalIOError(spill_files(), error)


class _Turn:
    """One job's place in the order: what it holds, per sink, until its turn
    (``held``: (sink, source, piece) from attempts that have ended, pieces on
    a tape; ``open``: {sink: (source, SpillBuffer)} of the running attempt),
    and whether its turn has come (``current``) and it is ``finished``."""

    __slots__ = ("_shelf", "held", "open", "current", "finished")

    def __init__(self, shelf):
        self._shelf = shelf
        self.held = []
        self.open = {}
        self.current = False
        self.finished = False

    def hold(self, sink, source, data):
        """Keep bytes (whole lines) for ``sink``."""
        self._buffer(sink, source).append(data)

    def hold_spilled(self, sink, source, spill):
        """Keep a SpillBuffer for ``sink`` (it belongs to the turn now): the
        first one held becomes the attempt's buffer, later ones are copied
        into it."""
        if sink in self.open:
            self.open[sink][1].append_all(spill)
        else:
            self.open[sink] = (source, spill)

    def _buffer(self, sink, source):
        if sink not in self.open:
            self.open[sink] = (source, SpillBuffer())
        return self.open[sink][1]

    def attempt_closed(self):
        """The running attempt has delivered all it will: what it held moves
        onto the tape, and no file stays open for it.  A token stands for
        the attempt as the pieces' source from now on (a Sink only compares
        sources), so that nothing of the attempt's is kept alive."""
        token = object()
        buffers, self.open = self.open, {}
        for sink, (_, buffer) in buffers.items():
            piece = self._shelf.put(buffer)
            if piece is not None:
                self.held.append((sink, token, piece))

    def take_turn(self):
        """The turn has come: everything held goes to the sinks, in the
        order it came; from now on the job writes straight to them."""
        if self.current:
            return
        self.current = True
        held, self.held = self.held, []
        for sink, source, piece in held:
            sink.write_spilled(source, piece)
        buffers, self.open = self.open, {}
        for sink, (source, buffer) in buffers.items():
            sink.write_spilled(source, buffer)


class _TurnSink:
    """A sink as one attempt's delivery mode sees it: straight through when
    its job has the turn, else held by the turn."""

    __slots__ = ("_turn", "_sink")

    def __init__(self, turn, sink):
        self._turn = turn
        self._sink = sink

    def write(self, source, data):
        if self._turn.current:
            self._sink.write(source, data)
        elif data:
            self._turn.hold(self._sink, source, data)

    def write_spilled(self, source, spill):
        if self._turn.current:
            self._sink.write_spilled(source, spill)
        elif spill.size:
            self._turn.hold_spilled(self._sink, source, spill)
        else:
            spill.close()


class _InTurn:
    """One attempt's output: its delivery mode, writing into its job's turn."""

    __slots__ = ("_mode", "_turn")

    def __init__(self, mode, turn):
        self._mode = mode
        self._turn = turn

    def data(self, stream, chunk):
        self._mode.data(stream, chunk)

    def close(self, succeeded):
        try:
            self._mode.close(succeeded)
        finally:
            self._turn.attempt_closed()


class _Shelf:
    """The tapes that ended attempts' held output waits on."""

    __slots__ = ("_tape",)

    def __init__(self):
        self._tape = None

    def put(self, buffer):
        """Move ``buffer`` (a SpillBuffer, closed here) onto a tape; returns
        the _Piece it became, or None if it was empty."""
        if not buffer.size:
            buffer.close()
            return None
        if self._tape is None or self._tape.closed or self._tape.size >= TAPE_BYTES:
            self._tape = _Tape()
        return self._tape.take(buffer)


class _Tape:
    """One SpillBuffer holding many pieces, each read back by place; closed
    (its memory or file freed) once its last piece has been read or
    dropped."""

    __slots__ = ("_buffer", "_pieces", "closed")

    def __init__(self):
        self._buffer = SpillBuffer()
        self._pieces = 0
        self.closed = False

    @property
    def size(self):
        return self._buffer.size

    def take(self, buffer):
        offset = self._buffer.size
        ends_with_newline = buffer.ends_with_newline
        self._buffer.append_all(buffer)
        self._pieces += 1
        return _Piece(self, offset, self._buffer.size - offset, ends_with_newline)

    def read_at(self, offset, size):
        return self._buffer.read_at(offset, size)

    def piece_done(self):
        self._pieces -= 1
        if not self._pieces:
            self.closed = True
            self._buffer.close()


class _Piece:
    """One attempt's held bytes for one sink, on a tape.  A Sink takes it as
    it takes a SpillBuffer (``size``, ``ends_with_newline``, ``reader()``,
    ``close()``), and reads it when its reader is ready for it."""

    __slots__ = ("_tape", "_at", "_end", "size", "ends_with_newline")

    def __init__(self, tape, offset, size, ends_with_newline):
        self._tape = tape
        self._at = offset
        self._end = offset + size
        self.size = size
        self.ends_with_newline = ends_with_newline

    def reader(self):
        return SpillReader(self)

    def read(self, size):
        data = self._tape.read_at(self._at, min(size, self._end - self._at))
        self._at += len(data)
        return data

    def close(self):
        if self._tape is not None:
            self._tape.piece_done()
            self._tape = None
