"""Line assembly: cutting one job stream into whole lines, in bounded memory.

A line ends at ``\\n``, at ``\\r\\n`` or at a lone ``\\r``: a progress bar that
redraws itself with ``\\r`` flows through as it is drawn instead of growing one
endless line.  The bytes are never changed, only where they are cut.

A partial line is kept in memory while it is small and in an unlinked
temporary file (a ``SpillBuffer``) once it passes ``SPILL_AFTER``, so memory
stays bounded whatever the line length; every byte is stored once and a line
held in memory is joined once, so time is linear in bytes.  A line that
reaches ``MAX_LINE`` bytes is handed on in pieces of ``MAX_LINE`` bytes.
"""

import re

from .sinks import SPILL_AFTER, SpillBuffer

# What ends a line: "\r\n" (one line end, never cut in two), "\n", or a
# lone "\r".
LINE_ENDS = re.compile(b"\r\n|\r|\n")

# A line longer than this is delivered in pieces of this size (disk space is
# finite too, and a reader should not wait forever for a line to end).
MAX_LINE = 64 * 1024 * 1024


class LineAssembler:
    """Cuts one byte stream into complete lines, keeping the partial tail.

    ``feed`` and ``finish`` return a list of pieces, in stream order: ``bytes``
    (one or more complete lines, or a final unterminated line) or a
    ``SpillBuffer`` holding exactly one line (or one ``MAX_LINE`` piece of a
    longer line) that grew too long for memory; the caller owns it and must
    deliver or close it.

    A ``\\r`` that ends a read is held until the next read shows whether a
    ``\\n`` follows, so ``\\r\\n`` is never cut in two."""

    __slots__ = ("_chunks", "_size", "_spill", "_cr_pending")

    def __init__(self):
        self._chunks = []  # the partial line while it is in memory
        self._size = 0  # bytes in the partial line (memory or disk)
        self._spill = None  # the partial line once it is on disk
        self._cr_pending = False  # the partial line ends with a held "\r"

    def feed(self, data):
        """Return the pieces that ``data`` completes."""
        if len(data) > MAX_LINE:
            # Cut first, so that no line inside one read can pass MAX_LINE.
            return [piece for start in range(0, len(data), MAX_LINE)
                    for piece in self.feed(data[start:start + MAX_LINE])]
        pieces = []
        if not data:
            return pieces
        if self._cr_pending and not data.startswith(b"\n"):
            self._end_line(pieces)  # the held "\r" was a line end by itself
        self._cr_pending = data.endswith(b"\r")
        end = len(data) - 1 if self._cr_pending else len(data)
        cut = max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end)) + 1
        if cut:
            first = _first_line_end(data, end)
            if self._spill is None and self._size + first <= MAX_LINE:
                # The common case: the partial line and the lines that follow
                # it become one piece, with one join.
                self._chunks.append(data[:cut])
                pieces.append(b"".join(self._chunks))
                self._chunks = []
                self._size = 0
            else:
                self._hold(data[:first], pieces)
                self._end_line(pieces)
                if first < cut:
                    pieces.append(data[first:cut])
        self._hold(data[cut:], pieces)
        return pieces

    def finish(self):
        """Return the unterminated tail, if any, as pieces, and forget it."""
        pieces = []
        self._end_line(pieces)
        self._cr_pending = False
        return pieces

    def _hold(self, data, pieces):
        """Add ``data`` to the partial line; a line reaching MAX_LINE goes out
        as a piece."""
        while data:
            room = MAX_LINE - self._size
            if len(data) < room:
                self._store(data)
                return
            self._store(data[:room])
            self._end_line(pieces)
            data = data[room:]

    def _store(self, data):
        if self._spill is None and self._size + len(data) > SPILL_AFTER:
            self._spill = SpillBuffer()
            self._chunks.append(data)
            # Past SPILL_AFTER the buffer writes straight to its file.
            self._spill.append(b"".join(self._chunks))
            self._chunks = []
        elif self._spill is not None:
            self._spill.append(data)
        else:
            self._chunks.append(data)
        self._size += len(data)

    def _end_line(self, pieces):
        """The partial line is complete: hand it on."""
        if self._spill is not None:
            pieces.append(self._spill)
            self._spill = None
        elif self._chunks:
            pieces.append(b"".join(self._chunks))
            self._chunks = []
        self._size = 0


def _first_line_end(data, end):
    """The index just past the first line end in ``data[:end]`` (there is
    one), a ``\\r\\n`` counting as one."""
    newline = data.find(b"\n", 0, end)
    cr = data.find(b"\r", 0, end)
    if cr == -1 or newline != -1 and newline < cr:
        return newline + 1
    return cr + 2 if data[cr + 1:cr + 2] == b"\n" else cr + 1


def final_line_end(data):
    """The line end that ``data`` finishes with, or b"" if none."""
    for end in (b"\r\n", b"\n", b"\r"):
        if data.endswith(end):
            return end
    return b""
