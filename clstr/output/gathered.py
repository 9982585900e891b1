"""--gather (clush -b, dshbak -c): each distinct output of an -E run printed
once when the run ends, under the folded names of the nodes that gave it,
largest group first; stdout's groups on stdout, stderr's on stderr::

    ---------------
    lab[01-07,09] (8)
    ---------------
    6.1.0-18-amd64

Memory stays bounded however many nodes answer and however much they say.
A node's output is held as it comes (in memory up to ``HOLD_IN_MEMORY``,
then in an unlinked temporary file) while a sha256 of it is kept up to
date; when its job ends, the digest tells whether an earlier node gave the
same bytes.  Only the first node's bytes of each distinct output are kept,
copied into one store file (one fd for the run, however many groups); the
others' are dropped at once, and only their names are kept.
"""

import errno
import hashlib
import os
import tempfile

from ..nodeset import fold, natural_key
from .sinks import COALESCE, SpillBuffer, SpillReader

# -E runs every node at once: each holds at most this much per stream in
# memory (1000 nodes: 32 MiB at worst) before its output goes to a file.
HOLD_IN_MEMORY = 16 * 1024
# clush -b's rule, above and below a group's names.
RULE = "-" * 15


def header(hosts, stream):
    """The lines above a group's output: the folded names, their count when
    more than one (as clush -b writes it), and ``stderr`` on stderr's, so
    that the two can be told apart where both reach the same terminal."""
    names = fold(hosts) + (" (%d)" % len(hosts) if len(hosts) > 1 else "")
    if stream == 2:
        names += " stderr"
    return ("%s\n%s\n%s\n" % (RULE, names, RULE)).encode("utf-8", "surrogateescape")


def _largest_first(group):
    """Largest group first; among equals, the one whose first node (in
    natural order) comes first."""
    return -len(group.hosts), min(natural_key(host) for host in group.hosts)


class Gathering:
    """The distinct outputs of a run's nodes, per stream, and who gave each;
    ``write`` prints them to ``sinks[1]`` and ``sinks[2]``."""

    def __init__(self, sinks):
        self._sinks = sinks
        self._groups = {1: {}, 2: {}}  # per stream: sha256 digest -> _SameOutput
        self._store = None  # made with the first output

    def open(self, host):
        """The handler for one attempt's output on ``host``."""
        return _NodeOutput(self, host)

    def add(self, stream, digest, buffer, host):
        """``host`` gave ``buffer`` (a SpillBuffer whose sha256 is
        ``digest``) on ``stream``.  Raises OSError if a new output cannot
        be stored."""
        group = self._groups[stream].get(digest)
        if group is None:
            if self._store is None:
                self._store = _Store()
            group = _SameOutput(self._store.keep(buffer))
            self._groups[stream][digest] = group
        group.hosts.append(host)

    def write(self):
        """Print every group (once: they are forgotten as they go)."""
        for stream, groups in self._groups.items():
            sink = self._sinks[stream]
            for group in sorted(groups.values(), key=_largest_first):
                # Each group is a source of its own: the sink puts a newline
                # after an output that did not end with one.
                sink.write(group, header(group.hosts, stream))
                sink.write_spilled(group, group.output)
            groups.clear()

    def close(self):
        """The run is over: the store goes once the sinks have read it."""
        if self._store is not None:
            self._store.release()


class _SameOutput:
    """One distinct output (a _Stored) and the hosts that produced it."""

    __slots__ = ("output", "hosts")

    def __init__(self, output):
        self.output = output  # a _Stored
        self.hosts = []


class _NodeOutput:
    """One attempt's output: held, and hashed as it comes."""

    __slots__ = ("_gathering", "_host", "_held")

    def __init__(self, gathering, host):
        self._gathering = gathering
        self._host = host
        self._held = {stream: (hashlib.sha256(), SpillBuffer(HOLD_IN_MEMORY))
                      for stream in (1, 2)}

    def data(self, stream, chunk):
        digest, buffer = self._held[stream]
        digest.update(chunk)
        buffer.append(chunk)

    def close(self, kept):
        """Give the output to the gathering if ``kept`` (the job ended on
        its own: its output is the node's answer), and let go of it.  Safe
        to call again after a failure."""
        held, self._held = self._held, {}
        try:
            for stream, (digest, buffer) in held.items():
                if kept and buffer.size:
                    self._gathering.add(stream, digest.digest(), buffer, self._host)
        finally:
            for _, buffer in held.values():
                buffer.close()


class _Store:
    """One unlinked temporary file holding a copy of each distinct output.
    It is closed when the gathering and every reader of it are done."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="clstr-gather-")
        self._end = 0
        self._users = 1  # the gathering

    def keep(self, buffer):
        """Append ``buffer``'s bytes; returns them as a _Stored."""
        reader = buffer.reader()
        offset = self._end
        try:
            for piece in iter(lambda: reader.read(COALESCE), b""):
                self._file.write(piece)
                self._end += len(piece)
            # Readers read the fd itself (pread), past Python's buffer.
            self._file.flush()
        finally:
            reader.close()
        return _Stored(self, offset, self._end - offset, buffer.ends_with_newline)

    def read(self, size, offset):
        return os.pread(self._file.fileno(), size, offset)

    def use(self):
        self._users += 1

    def release(self):
        self._users -= 1
        if not self._users:
            self._file.close()


class _Stored:
    """An output in the store, given to a sink as a SpillBuffer is (its
    ``size``, ``ends_with_newline``, ``reader()`` and ``close()``)."""

    __slots__ = ("_store", "_offset", "size", "ends_with_newline")

    def __init__(self, store, offset, size, ends_with_newline):
        self._store = store
        self._offset = offset
        self.size = size
        self.ends_with_newline = ends_with_newline

    def reader(self):
        self._store.use()
        return SpillReader(_StoredHandle(self._store, self._offset, self.size))

    def close(self):
        """Nothing to let go of: its bytes belong to the store."""


class _StoredHandle:
    """Reads one output out of the store (the handle of a SpillReader)."""

    __slots__ = ("_store", "_offset", "_left")

    def __init__(self, store, offset, size):
        self._store = store
        self._offset = offset
        self._left = size

    def read(self, size):
        size = min(size, self._left)
        if not size:
            return b""
        data = self._store.read(size, self._offset)
        if not data:
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # the store was cut short
        self._offset += len(data)
        self._left -= len(data)
        return data

    def close(self):
        if self._store is not None:
            self._store.release()
            self._store = None
