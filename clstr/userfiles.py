"""Files clstr writes on the user's behalf: the joblog, -o/-e, -A and
--output-dir.  The one place that knows the rules:

- Check first, touch later.  The ``check_*`` functions look (stat, access,
  readlink) and never create, open for writing or truncate anything, so a
  usage error or ``--dry-run`` leaves every file as it was.  Files are
  opened or created only when a run really starts.
- A path the user names is written where it really is: through the user's
  own symlinks, never through a link someone else planted in a sticky,
  world-writable directory such as /tmp (the kernel's protected_symlinks
  rule, which is often off).
- Something that is not a regular file (a FIFO, a terminal, /dev/stderr,
  ``>(cat)``) is written in place and never replaced.
- New files get 0666 minus the umask, as a shell's ``>`` would give them.
- Inside an output directory clstr follows no symlinks and opens partial
  files under fresh names, so a directory other users can write is safe.
- A write that fails raises ``LocalIOError``: clstr's own failure, never a
  node's.
"""

import errno
import fcntl
import os
import re
import stat
import tempfile

from .errors import LocalIOError

# Links followed before giving up, as the kernel does (ELOOP).
MAX_SYMLINKS = 40

INDEX_NAME = "index.tsv"
INDEX_HEADER = b"seq\tstatus\thost\tcommand\n"
# The files of job N in an output directory.
_JOB_FILE = re.compile(r"([0-9]+)\.(?:out|err)\Z")


def _completed_in_index(data):
    """The job numbers an index's content shows completed (status 0)."""
    completed = set()
    for line in data.split(b"\n"):
        fields = line.split(b"\t", 2)
        if len(fields) == 3 and fields[1] == b"0" and fields[0].isdigit():
            completed.add(int(fields[0]))
    return completed


class UserFileError(Exception):
    """A path clstr cannot write, found before anything started: the reason,
    in a few words (the caller names the option and the path)."""


class InUseError(Exception):
    """An output another running clstr holds (``path`` names it); nothing of
    it has been changed."""

    def __init__(self, path):
        super().__init__("%s is in use by another clstr run" % path)
        self.path = path


def lock_for_this_run(fd, path):
    """Take an advisory lock on the open regular file ``fd`` for as long as
    it stays open, or raise InUseError if another run holds it.  Where no
    lock can be had (NFS without a lock daemon), the run goes on unlocked."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InUseError(path) from None
    except OSError:
        pass


def current_umask():
    # The only way to read the umask is to set it; clstr is single-threaded.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode():
    """The mode a shell's ``>`` gives a new file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


def write_all(fd, data, what):
    """Write all of ``data`` to ``fd``; a failure is a LocalIOError naming
    ``what``."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as error:
        raise LocalIOError(what, error)


# -- checks: they look, and touch nothing ----------------------------------------


def _check_directory(directory):
    """``directory`` must exist and let us create files in it."""
    if not os.path.isdir(directory):
        raise UserFileError("no such directory %s" % directory)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserFileError("directory %s: %s" % (directory, os.strerror(errno.EACCES)))


def check_writable(path):
    """Raise UserFileError unless opening ``path`` for writing (creating it if
    need be) should work, and its links are ones we would follow (see
    ``resolve_links``).  Creates nothing."""
    resolve_links(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        # Missing, or a dangling link: the file will be made where the links
        # lead, so that directory must exist.
        _check_directory(os.path.dirname(os.path.realpath(path)) or ".")
        return
    except OSError as error:
        raise UserFileError(error.strerror)
    if stat.S_ISDIR(info.st_mode):
        raise UserFileError(os.strerror(errno.EISDIR))
    if not os.access(path, os.W_OK):
        raise UserFileError(os.strerror(errno.EACCES))


def check_output_dir(path):
    """Raise UserFileError unless ``path`` is, or can be made (with its
    parents), a directory we can write.  Creates nothing."""
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise UserFileError("exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserFileError(os.strerror(errno.EACCES))
        return
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UserFileError("%s is not a directory" % ancestor)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserFileError("directory %s: %s" % (ancestor, os.strerror(errno.EACCES)))


def _is_world_writable_sticky(info):
    mode = info.st_mode
    return bool(mode & stat.S_ISVTX) and bool(mode & stat.S_IWOTH)


def _check_link_owner(link, info, directory):
    """Refuse to follow a link that someone else may have planted, as the
    kernel's protected_symlinks does: in a sticky world-writable directory,
    only links owned by us or by the directory's owner are followed."""
    try:
        directory_info = os.stat(directory)
    except OSError as error:
        raise UserFileError(error.strerror)
    if not _is_world_writable_sticky(directory_info):
        return
    if info.st_uid in (os.geteuid(), directory_info.st_uid):
        return
    raise UserFileError("%s is a symbolic link owned by another user (uid %d) in the "
                        "world-writable directory %s; not following it"
                        % (link, info.st_uid, directory))


def resolve_links(path):
    """Where ``path`` really is: its symlinks followed one at a time, each
    checked by ``_check_link_owner``.  Returns the final path (which may not
    exist yet), or None if the path goes through /proc, whose links are the
    kernel's handles on open files (/dev/stderr, /dev/fd/N, ``>(cat)``) and
    can only be written in place.  Raises UserFileError."""
    current = os.path.abspath(path)
    for _ in range(MAX_SYMLINKS):
        directory = os.path.realpath(os.path.dirname(current))
        current = os.path.join(directory, os.path.basename(current))
        if current == "/proc" or current.startswith("/proc/"):
            return None
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return current
        except OSError as error:
            raise UserFileError(error.strerror)
        if not stat.S_ISLNK(info.st_mode):
            return current
        _check_link_owner(current, info, directory)
        current = os.path.join(directory, os.readlink(current))
    raise UserFileError(os.strerror(errno.ELOOP))


# -- opening, when a run really starts ---------------------------------------------


def open_for_writing(path, truncate=True):
    """Open ``path`` as a shell's ``>`` (``truncate``) or ``>>`` would: through
    symlinks, creating it with 0666 minus the umask.  Raises LocalIOError."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    flags |= os.O_TRUNC if truncate else os.O_APPEND
    try:
        return os.open(path, flags, 0o666)
    except OSError as error:
        raise LocalIOError(path, error)


def open_to_own(path):
    """Open ``path`` for appending, as ``>>`` would, truncating nothing yet:
    (fd, whether it is a regular file).  A regular file is opened for
    reading too (--resume cuts a torn last line) and locked for this run
    (see ``lock_for_this_run``); anything else (a FIFO, /dev/stdout) is
    opened for writing only, waiting for a FIFO's reader as a shell would.
    Raises LocalIOError or InUseError."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        regular = True  # missing: created below, or the open says why not
    flags = os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    try:
        if regular:
            try:
                fd = os.open(path, flags | os.O_RDWR, 0o666)
            except PermissionError:  # write-only: enough unless resuming
                fd = os.open(path, flags | os.O_WRONLY, 0o666)
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        else:
            fd = os.open(path, flags | os.O_WRONLY, 0o666)
    except OSError as error:
        raise LocalIOError(path, error)
    if regular:
        try:
            lock_for_this_run(fd, path)
        except InUseError:
            os.close(fd)
            raise
    return fd, regular


class ReplacedFile:
    """A regular file (or one to be made) rewritten whole by atomic rename, so
    a reader sees the old contents or the new, never half.  ``path`` is where
    the file really is (links resolved): the rename happens there, so the
    user's symlink stays a symlink.  An existing file keeps its mode; a new
    one gets 0666 minus ``umask``.  ``shown`` names it in messages."""

    def __init__(self, path, shown, umask):
        self.path = path
        self.shown = shown
        self._new_mode = 0o666 & ~umask

    def write(self, data):
        directory, name = os.path.split(self.path)
        try:
            existing = os.lstat(self.path)
        except OSError:
            existing = None
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            existing = None
        try:
            fd, temporary = tempfile.mkstemp(prefix="." + name + ".", suffix=".clstr",
                                             dir=directory)
        except OSError as error:
            raise LocalIOError(self.shown, error)
        try:
            try:
                if existing is None:
                    os.fchmod(fd, self._new_mode)
                else:
                    os.fchmod(fd, stat.S_IMODE(existing.st_mode))
                    _keep_owner(fd, existing)
                write_all(fd, data, self.shown)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
        except BaseException as error:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            if isinstance(error, OSError):
                raise LocalIOError(self.shown, error)
            raise

    def close(self):
        pass


def _keep_owner(fd, existing):
    """Root rewriting another user's file gives it back to that user."""
    if (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.fchown(fd, existing.st_uid, existing.st_gid)
        except OSError:
            pass  # not root: the new file is ours, as it would be with cp


class InPlaceFile:
    """Something that is not a regular file (a FIFO, a terminal, a pipe such
    as ``>(cat)``): each snapshot is written to it whole, in place.  It is
    opened without blocking and once: a FIFO that nobody reads yet is tried
    again next time, a reader that does not keep up misses the rest of a
    snapshot, and a reader that went away is not an error of the run."""

    def __init__(self, path):
        self.path = path
        self.shown = path
        self._fd = None
        self._regular = False

    def write(self, data):
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as error:
                if error.errno == errno.ENXIO:  # a FIFO with no reader now
                    return
                raise LocalIOError(self.path, error)
            self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        try:
            if self._regular:  # /dev/stdout when stdout is a file, say
                os.ftruncate(self._fd, 0)
                os.lseek(self._fd, 0, os.SEEK_SET)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            self.close()
        except OSError as error:
            raise LocalIOError(self.path, error)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def snapshot_file(path):
    """The file ``-A path`` names, resolved and checked, with nothing opened
    or created yet: a ReplacedFile or an InPlaceFile.  Raises UserFileError
    (a directory, a missing directory, a foreign link in /tmp...)."""
    real = resolve_links(path)
    if real is None:
        check_writable(path)
        return InPlaceFile(path)
    try:
        info = os.stat(real)
    except FileNotFoundError:
        _check_directory(os.path.dirname(real))
        return ReplacedFile(real, path, current_umask())
    except OSError as error:
        raise UserFileError(error.strerror)
    if stat.S_ISDIR(info.st_mode):
        raise UserFileError(os.strerror(errno.EISDIR))
    if stat.S_ISREG(info.st_mode):
        # Replacing needs the directory; writing needs nothing of the file.
        _check_directory(os.path.dirname(real))
        return ReplacedFile(real, path, current_umask())
    if not os.access(real, os.W_OK):
        raise UserFileError(os.strerror(errno.EACCES))
    return InPlaceFile(real)


class OutputDir:
    """An --output-dir, created (with its parents) when the run starts.  Its
    files are opened without following symlinks, and partial files under
    fresh names, so links planted by others in a directory they can write are
    never followed.  ``index.tsv`` is locked for the run when opened (one run
    at a time) and changed only by ``start()``."""

    def __init__(self, path, resume=False):
        self.path = path
        self._resume = resume
        self._mode = new_file_mode()
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise LocalIOError(path, error)
        self._index_path = os.path.join(path, INDEX_NAME)
        self._index_fd = self._open_index()

    def _open_index(self):
        path = self._index_path
        try:
            # O_NONBLOCK: a planted FIFO must not hang the open.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                         | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as error:
            if error.errno == errno.ELOOP:
                error = OSError(errno.ELOOP, "a symbolic link; clstr follows no links "
                                "in an output directory")
            raise LocalIOError(path, error)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LocalIOError(path, OSError(errno.EINVAL, "not a regular file"))
            lock_for_this_run(fd, self.path)
        except OSError as error:
            os.close(fd)
            raise LocalIOError(path, error)
        except (LocalIOError, InUseError):
            os.close(fd)
            raise
        return fd

    def start(self):
        """Start the index afresh (``resume``: append to it, less a last line
        torn by a full disk) and remove the N.out and N.err files of jobs it
        does not show completed, so that no file of an earlier run passes for
        this one's.  Raises LocalIOError."""
        fd, path = self._index_fd, self._index_path
        try:
            if self._resume:
                data = os.pread(fd, os.fstat(fd).st_size, 0)
                whole = data[:data.rfind(b"\n") + 1]
                completed = _completed_in_index(whole)
                os.ftruncate(fd, len(whole))
            else:
                completed = set()
                os.ftruncate(fd, 0)
            if os.fstat(fd).st_size == 0:
                write_all(fd, INDEX_HEADER, path)
            names = os.listdir(self.path)
        except OSError as error:
            raise LocalIOError(path, error)
        for name in names:
            match = _JOB_FILE.match(name)
            if match and int(match.group(1)) not in completed:
                try:
                    os.unlink(os.path.join(self.path, name))
                except OSError as error:
                    raise LocalIOError(os.path.join(self.path, name), error)

    def partial(self, name):
        """A fresh hidden file for what will become ``name``: (fd, its path).
        Raises LocalIOError."""
        try:
            # mkstemp opens with O_CREAT | O_EXCL | O_NOFOLLOW.
            fd, path = tempfile.mkstemp(prefix="." + name + ".", suffix=".partial",
                                        dir=self.path)
        except OSError as error:
            raise LocalIOError(os.path.join(self.path, name), error)
        try:
            os.fchmod(fd, self._mode)
        except OSError as error:
            os.close(fd)
            os.unlink(path)
            raise LocalIOError(path, error)
        return fd, path

    def publish(self, partial, name):
        """Put a finished partial file in place as ``name``.  A rename
        replaces a link planted there; it never writes through it."""
        target = os.path.join(self.path, name)
        try:
            os.replace(partial, target)
        except OSError as error:
            raise LocalIOError(target, error)

    def record(self, line):
        """Append one index line (bytes) with a single write."""
        write_all(self._index_fd, line, self._index_path)

    def close(self):
        if self._index_fd is not None:
            os.close(self._index_fd)
            self._index_fd = None


class PartialFile:
    """A file written under a fresh hidden name beside ``relative`` (a
    path below the directory ``root``), put in place whole by ``publish()``
    or removed by ``discard()`` (--return's files).  Directories on the way
    are made (0777 minus the umask); no symbolic link below ``root`` is
    followed, so a link planted there can never redirect the file.  The file
    gets ``mode``.  Raises LocalIOError (``shown`` names it)."""

    def __init__(self, root, relative, mode):
        self.shown = os.path.normpath(os.path.join(root, relative))
        *directories, self._name = relative.split("/")
        self._directory = None
        self._fd = None
        self._partial = None  # its hidden name, once made
        self.discarded = False
        try:
            self._directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            for name in directories:
                try:
                    os.mkdir(name, 0o777, dir_fd=self._directory)
                except FileExistsError:
                    pass
                below = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC, dir_fd=self._directory)
                os.close(self._directory)
                self._directory = below
            # A fresh name, made with O_EXCL: nothing planted is opened.
            while self._partial is None:
                name = ".%s.%s.partial" % (self._name, os.urandom(6).hex())
                try:
                    self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                       | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                                       dir_fd=self._directory)
                except FileExistsError:
                    continue
                self._partial = name
            os.fchmod(self._fd, mode)
        except OSError as error:
            self.discard()
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                error = OSError(error.errno, "a symbolic link or not a directory on the way; "
                                "clstr follows no links below %s" % root)
            raise LocalIOError(self.shown, error)

    def write(self, data):
        try:
            write_all(self._fd, data, self.shown)
        except LocalIOError:
            self.discard()
            raise

    def publish(self):
        """Put the file in place under its name (a rename: whole or not at
        all, replacing what was there, never writing through a link)."""
        try:
            os.close(self._fd)
            self._fd = None
            os.replace(self._partial, self._name, src_dir_fd=self._directory,
                       dst_dir_fd=self._directory)
        except OSError as error:
            self.discard()
            raise LocalIOError(self.shown, error)
        os.close(self._directory)
        self._directory = None

    def discard(self):
        """Remove what was written (it never gets the file's name)."""
        self.discarded = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._directory is not None:
            if self._partial is not None:
                try:
                    os.unlink(self._partial, dir_fd=self._directory)
                except OSError:
                    pass
            os.close(self._directory)
            self._directory = None
