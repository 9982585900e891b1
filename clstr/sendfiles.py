"""``--send FILE...``: each file copied to every node once, before the
node's first job (GNU parallel's --basefile, pdcp), over the connection the
node's jobs use (filecopy.py).

A host's slots wait, held, until its files are there (``Sends`` is a step
of the host's preparation, as its master is: nodecare.py admits the slots
once both are done).  A copy reads exactly the file's size from its stdin
into a temporary name next to the target that holds the node's name and
the copy's pid (homes are often one NFS directory that every node shares),
gives it the file's mode less setuid and setgid, and renames it into
place; so no node, and no reader on another node, ever sees part of it
under its name.  Relative targets are relative to the directory the node's
jobs start in (the home); a missing directory on the way is made.  The
owner is the remote user; the time of modification is the copy's (mtime is
not kept, as with cp and pdcp without -p).

The file streams from disk to the copy's stdin pipe (``FileWriter``:
sendfile, no more than a pipe's worth in memory), opened afresh for each
node, so a local read error is clstr's own (exit 3), never the node's.
"""

import collections
import errno
import os
import stat

from .errors import LocalIOError
from .failures import cannot_start_ssh
from .filecopy import RemoteCopy, copy_program, remote_path
from .limits import out_of_resources

# How many hosts receive their files at once: each copy holds a session
# and, without masters, an ssh of its own.
SENDING_AT_ONCE = 32
# Tried again after this long when no fd or process was left for a copy.
RETRY_AFTER = 0.5
# Bytes sent to a copy's pipe at a time.
CHUNK = 1 << 20

# $1: the target, $2: its size in bytes, $3: its mode (octal).  A short
# read (the connection lost, stdin closed early) leaves a short temporary
# file, which is removed; the target is touched only by the rename.
_SEND = (
    "t=$1; case $t in */*) d=${t%/*}; d=${d:-/};; *) d=.;; esac; "
    "[ -d \"$d\" ] || mkdir -p -- \"$d\" || clstr_done 1; "
    "if [ -d \"$t\" ]; then printf \"%s: Is a directory\\n\" \"$t\" >&2; clstr_done 1; fi; "
    "p=$d/.${t##*/}.clstr-$(uname -n)-$$; got=-1; "
    "head -c \"$2\" >\"$p\" && got=$(wc -c <\"$p\"); "
    "if [ \"$got\" -eq \"$2\" ] && chmod \"$3\" \"$p\" && mv -f -- \"$p\" \"$t\"; then "
    "clstr_done 0; fi; "
    "rm -f -- \"$p\"; "
    "if [ \"$got\" -ge 0 ] && [ \"$got\" -ne \"$2\" ]; then "
    "printf \"%s: stored %s of %s bytes\\n\" \"$t\" \"$got\" \"$2\" >&2; fi; "
    "clstr_done 1")


class SendFileError(Exception):
    """A --send FILE that cannot be sent (a usage error)."""


class SentFile:
    """One --send file: ``path`` here (as given), ``target`` (bytes) on the
    nodes, its ``size`` and the ``mode`` it gets there."""

    __slots__ = ("path", "target", "size", "mode")

    def __init__(self, path, target, size, mode):
        self.path = path
        self.target = target
        self.size = size
        self.mode = mode

    def program(self, token):
        """The copy's argv, reporting with ``token``."""
        return copy_program(token, _SEND, "clstr-send",
                            [remote_path(self.target), b"%d" % self.size, b"%o" % self.mode])

    def writer(self, loop, fd):
        """Streams the file into the pipe ``fd`` (interface.stdin_writer)."""
        return FileWriter(loop, fd, self.path, self.size)


def sent_file(path):
    """The SentFile for ``--send path``, checked now (the file is read
    again for each node).  Raises SendFileError."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise SendFileError("--send %s: %s" % (path, error.strerror)) from None
    if not stat.S_ISREG(info.st_mode):
        raise SendFileError("--send %s: not a regular file (directories are not sent; "
                            "tar them first)" % path)
    if not os.access(path, os.R_OK):
        raise SendFileError("--send %s: %s" % (path, os.strerror(errno.EACCES)))
    target = os.fsencode(path).rstrip(b"/")
    if os.path.basename(target) in (b".", b".."):
        raise SendFileError("--send %s: names no file" % path)
    mode = stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)
    return SentFile(path, target, info.st_size, mode)


def sent_files(paths):
    """SentFiles for ``paths``; two landing in the same place are a
    usage error.  Raises SendFileError."""
    files = [sent_file(path) for path in paths]
    targets = {}
    for sent in files:
        if sent.target in targets:
            raise SendFileError("--send %s and %s would land in the same place on the nodes"
                                % (targets[sent.target], sent.path))
        targets[sent.target] = sent.path
    return files


def describe_sends(transport, slot, files):
    """(argv, SentFile) of each copy to ``slot``'s host (--dry-run)."""
    token = transport.report_reader().token
    return [(transport.describe_remote(slot, sent.program(token)), sent) for sent in files]


def _pread_write(out_fd, in_fd, offset, count):
    return os.write(out_fd, os.pread(in_fd, count, offset))


class FileWriter:
    """Writes the first ``size`` bytes of the file at ``path`` to the pipe
    ``fd`` from ``loop`` as its reader takes them; ``cancel()`` before
    ``fd`` is closed.  The file is opened at the first write, in the loop,
    so that its errors reach the run's handler (LocalIOError: exit 3); a
    reader gone (EPIPE) ends the writing quietly: the copy's end says why."""

    __slots__ = ("_loop", "_fd", "_path", "_size", "_file", "_offset", "_send")

    def __init__(self, loop, fd, path, size):
        self._loop = loop
        self._fd = fd
        self._path = path
        self._size = size
        self._file = None
        self._offset = 0
        self._send = getattr(os, "sendfile", _pread_write)
        os.set_blocking(fd, False)
        loop.add_writer(fd, self._write)

    def _write(self):
        try:
            if self._file is None:
                self._file = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            count = min(CHUNK, self._size - self._offset)
            written = self._send(self._fd, self._file, self._offset, count) if count else 0
        except (BlockingIOError, InterruptedError):
            return
        except BrokenPipeError:
            self.cancel()
            return
        except OSError as error:
            if error.errno in (errno.EINVAL, errno.ENOSYS) and self._send is not _pread_write:
                self._send = _pread_write  # no sendfile to a pipe here
                return
            self.cancel()
            raise LocalIOError("--send " + self._path, error)
        if count and not written:
            self.cancel()
            raise LocalIOError("--send " + self._path,
                               OSError(errno.EIO, "it shrank while being sent"))
        self._offset += written
        if self._offset >= self._size:
            self.cancel()

    def cancel(self):
        if self._fd is not None:
            self._loop.remove_writer(self._fd)
            self._fd = None
        if self._file is not None:
            os.close(self._file)
            self._file = None


class Sends:
    """The --send step of each host's preparation: ``files`` (SentFiles)
    copied, one after another, through ``transport`` under ``loop``.
    ``start(slot)`` begins the copies to ``slot``'s host over its
    connection; ``done(name, failure)`` hears the end: failure None when
    every file is there (the host is then ``ready``), else the first
    failure (``failures.judge_copy``'s).  A copy whose master had gone is
    forgotten: the host's next master brings a new ``start``."""

    def __init__(self, loop, transport, files, done):
        self._loop = loop
        self._transport = transport
        self._files = files
        self._done = done
        self._ready = set()
        self._running = {}  # host name -> its _HostSend
        self._waiting = collections.deque()  # slots whose hosts wait for a turn

    def ready(self, name):
        return name in self._ready

    def busy(self, name):
        return name in self._running or any(s.host.name == name for s in self._waiting)

    def start(self, slot):
        self._waiting.append(slot)
        self._next()

    def _next(self):
        while self._waiting and len(self._running) < SENDING_AT_ONCE:
            slot = self._waiting.popleft()
            if slot.host.retired:
                continue
            host_send = self._running[slot.host.name] = _HostSend(self, slot)
            host_send.copy_next()

    def _ended(self, host_send, failure):
        name = host_send.slot.host.name
        del self._running[name]
        if failure is None:
            self._ready.add(name)
        self._done(name, failure)
        self._next()

    def _unstarted(self, host_send, error):
        """A copy could not start: its master had gone (``error`` None) or
        no fd or process was left (then it tries again shortly)."""
        del self._running[host_send.slot.host.name]
        if error is None:
            return
        if out_of_resources(error):
            self._loop.call_later(RETRY_AFTER, lambda: self.start(host_send.slot))
            return
        self._done(host_send.slot.host.name, cannot_start_ssh(error))

    def kill_all(self):
        """The run is over: drop every copy (each node removes its
        temporary file at the EOF)."""
        for host_send in list(self._running.values()):
            host_send.kill()
        self._running.clear()
        self._waiting.clear()


class _HostSend:
    """The copies to one host, one file at a time, through ``slot``'s
    connection."""

    def __init__(self, sends, slot):
        self._sends = sends
        self.slot = slot
        self._left = list(sends._files)
        self._copy = None

    def copy_next(self):
        if not self._left:
            self._sends._ended(self, None)
            return
        sent = self._left.pop(0)
        try:
            self._copy = RemoteCopy(self._sends._transport, self.slot, sent.program,
                                    self._copied, self._unstarted, stdin_data=sent)
        except OSError as error:
            self._unstarted(error)

    def _copied(self, failure):
        if failure is None:
            self.copy_next()
        else:
            self._sends._ended(self, failure)

    def _unstarted(self, error):
        self._sends._unstarted(self, error)

    def kill(self):
        if self._copy is not None:
            self._copy.session.kill()
