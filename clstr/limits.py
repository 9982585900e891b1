"""This machine's limits: what clstr does when it runs out of open files or
processes.  Pure policy, no I/O but reading the limits themselves.

Running out is never a node's fault and never a reason to end a run: a
start that fails for want of fds or processes (``out_of_resources``, decided
by errno alone) waits for a running job to give some back, and the run goes
on with fewer jobs at once.  Only when nothing runs at all, so that nothing
can free any, does ``Shortage`` try again with back-off, and gives up after
GIVE_UP_AFTER seconds.
"""

import errno

# fork/posix_spawn: EAGAIN (RLIMIT_NPROC, or the system's threads-max) and
# ENOMEM; pipe/socket/open: EMFILE (RLIMIT_NOFILE), ENFILE (fs.file-max),
# ENOMEM and ENOBUFS.
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM,
                               errno.ENOBUFS))
# With nothing running, a failed start is tried again after this, doubling
# up to RETRY_MAX, for GIVE_UP_AFTER seconds in all.
RETRY_FIRST = 0.1
RETRY_MAX = 2.0
GIVE_UP_AFTER = 30.0


def errno_of(error):
    """The errno of an OSError, or of the OSError a wrapper (LocalIOError)
    carries as ``error``; None for anything else."""
    number = getattr(error, "errno", None)
    if number is None:
        number = getattr(getattr(error, "error", None), "errno", None)
    return number


def out_of_resources(error):
    """Whether ``error`` says this machine is out of fds, processes or
    memory for now (not that anything is wrong)."""
    return errno_of(error) in _OUT_OF_RESOURCES


def _soft_limit(name):
    try:
        import resource
        soft, _ = resource.getrlimit(getattr(resource, name))
    except (ImportError, AttributeError, ValueError, OSError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def open_files_limit():
    """The soft RLIMIT_NOFILE (cli raised it as far as the hard limit lets),
    or None if there is none to respect."""
    return _soft_limit("RLIMIT_NOFILE")


def limit_words(error):
    """Which limit ``error`` (out of resources, or None: the open-files limit
    as read at start) ran into, and how to raise it, for the user."""
    number = errno_of(error)
    if error is None or number == errno.EMFILE:
        return "the open-files limit is %s (raise it with ulimit -n)" % open_files_limit()
    if number == errno.ENFILE:
        return "the system's open-files limit is reached (raise fs.file-max)"
    if number == errno.EAGAIN:
        processes = _soft_limit("RLIMIT_NPROC")
        if processes is not None:
            return "the process limit is %d (raise it with ulimit -u)" % processes
        return "the system's process limit is reached (raise kernel.threads-max)"
    return "out of memory (%s)" % (getattr(error, "strerror", None) or error)


class Shortage:
    """How long starts have failed for want of resources while nothing ran.
    ``failed(running)`` after each such failure returns None (something
    runs: wait for it to end), a delay to try again after, or GIVE_UP;
    ``eased()`` after anything started.  ``clock``: seconds, monotonic."""

    GIVE_UP = "give up"

    def __init__(self, clock):
        self._clock = clock
        self._since = None
        self._delay = RETRY_FIRST

    def failed(self, running):
        if running:
            self.eased()
            return None
        now = self._clock()
        if self._since is None:
            self._since = now
        if now - self._since >= GIVE_UP_AFTER:
            return self.GIVE_UP
        delay, self._delay = self._delay, min(self._delay * 2, RETRY_MAX)
        return min(delay, self._since + GIVE_UP_AFTER - now)

    def eased(self):
        self._since = None
        self._delay = RETRY_FIRST
