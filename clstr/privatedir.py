"""The run's private directory: files that are nobody else's business.

ControlMaster sockets and ssh's logs (``ssh -E``) live in one fresh directory
per run, made with mode 0700 by ``tempfile.mkdtemp``: no other user can
read what ssh says about the connections or plant a file where clstr expects
its own, and no stale file of a crashed run is ever reused.  Its path is
short, because unix socket paths are limited to about 100 bytes.
"""

import shutil
import tempfile

# Longer temporary directories (a long $TMPDIR) leave too little room for
# socket names.
MAX_BASE = 40


class PrivateDirectory:
    """A fresh 0700 directory; ``remove()`` deletes it and all it holds.
    ``shown_as``: a name for one that is never made, whose paths are only
    shown (--dry-run)."""

    def __init__(self, shown_as=None):
        if shown_as is None:
            base = tempfile.gettempdir()
            if len(base) > MAX_BASE:
                base = "/tmp"
            shown_as = tempfile.mkdtemp(prefix="clstr-", dir=base)
        self.path = shown_as
        self._names = 0

    def new_path(self, stem, suffix=""):
        """A path in the directory that nothing has used in this run:
        ``stem``, a number, ``suffix``."""
        self._names += 1
        return "%s/%s%d%s" % (self.path, stem, self._names, suffix)

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)
