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

The file itself, opened afresh for each node, is the copy's stdin: the
transport (the host's master, or ssh) reads it to its end, as ``ssh host
cmd < file`` does, so no byte of it passes through clstr, and its end is
the EOF the copy reads to.  A file clstr cannot open is its own failure
(exit 3), never the node's.
"""

import collections
import errno
import functools
import os
import stat

from .errors import LocalIOError
from .failures import cannot_start_ssh
from .filecopy import RemoteCopy, copy_program, remote_path
from .limits import out_of_resources

# How many hosts receive their files at once without masters, where each
# copy is an ssh of its own.  Through masters, every host whose master is
# up sends at once: a master kept waiting would leave after its idle time
# (masters.MASTER_IDLE_EXIT) and cost a login more.
SENDING_AT_ONCE = 32
# Tried again after this long when no fd or process was left for a copy.
RETRY_AFTER = 0.5

# $1: the target, $2: its size in bytes, $3: its mode (octal).  The file
# comes on stdin, to its end.  A short one (the connection lost, clstr's
# stop) leaves a short temporary file, which is removed; the target is
# touched only by the rename.
_SEND = (
    "t=$1; case $t in */*) d=${t%/*}; d=${d:-/};; *) d=.;; esac; "
    "[ -d \"$d\" ] || mkdir -p -- \"$d\" || clstr_done 1; "
    "if [ -d \"$t\" ]; then printf \"%s: Is a directory\\n\" \"$t\" >&2; clstr_done 1; fi; "
    "p=$d/.${t##*/}.clstr-$(uname -n)-$$; got=-1; "
    "cat >\"$p\" && got=$(wc -c <\"$p\"); "
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

    def program(self, token, workdir=None):
        """The copy's argv, reporting with ``token``, in ``workdir``
        (--workdir, or None)."""
        return copy_program(token, _SEND, "clstr-send",
                            [remote_path(self.target), b"%d" % self.size, b"%o" % self.mode],
                            workdir)

    def open(self):
        """The file opened afresh, as a copy's stdin (interface.stdin_ends:
        its own offset, read to its end by the transport).  Raises
        LocalIOError."""
        try:
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise LocalIOError("--send " + self.path, error)


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


def describe_sends(transport, slot, files, workdir):
    """(argv, SentFile) of each copy to ``slot``'s host (--dry-run)."""
    token = transport.report_reader().token
    return [(transport.describe_remote(slot, sent.program(token, workdir)), sent)
            for sent in files]


class Sends:
    """The --send step of each host's preparation: ``files`` (SentFiles)
    copied, one after another, through ``transport`` under ``loop``, into
    ``workdir`` (--workdir) for relative targets.
    ``start(slot)`` begins the copies to ``slot``'s host over its
    connection; ``done(name, failure)`` hears the end: failure None when
    every file is there (the host is then ``ready``), else the first
    failure (``failures.judge_copy``'s).  A copy whose master had gone is
    forgotten: the host's next master brings a new ``start``.  A file clstr
    cannot open goes to ``local_io_failed(error)`` (the run stops, exit
    3)."""

    def __init__(self, loop, transport, files, workdir, done, local_io_failed):
        self._local_io_failed = local_io_failed
        self.workdir = workdir
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
        while self._waiting and (self._transport.has_masters
                                 or len(self._running) < SENDING_AT_ONCE):
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

    def _cannot_read(self, host_send, error):
        """clstr cannot open a file: its own failure, not the host's."""
        del self._running[host_send.slot.host.name]
        self._local_io_failed(error)

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
            program = functools.partial(sent.program, workdir=self._sends.workdir)
            self._copy = RemoteCopy(self._sends._transport, self.slot, program,
                                    self._copied, self._unstarted, stdin_data=sent)
        except OSError as error:
            self._unstarted(error)
        except LocalIOError as error:
            self._sends._cannot_read(self, error)

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
