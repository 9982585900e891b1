"""Failures that are clstr's own, never a node's.

When clstr cannot write one of its own outputs (stdout, stderr, the joblog,
the active-nodes file, an output directory), no node is to blame: the run
stops cleanly with its own exit status (exits.EXIT_LOCAL_IO) and one line
naming the file and the OS error.
"""

class LocalIOError(Exception):
    """clstr's own read or write of ``what`` (a file name or "stdout") failed
    with the OSError ``error``."""

    def __init__(self, what, error):
        self.what = what
        self.error = error
        reason = getattr(error, "strerror", None) or str(error)
        super().__init__("%s: %s" % (what, reason))


def guarded(what, write, args, failed):
    """Run one of clstr's own writes, ``write(*args)`` to ``what``; if it
    fails, tell ``failed(LocalIOError)``.  Returns whether it succeeded."""
    try:
        write(*args)
        return True
    except LocalIOError as error:
        failed(error)
    except OSError as error:
        failed(LocalIOError(what, error))
    return False
