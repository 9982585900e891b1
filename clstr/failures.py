"""Why an attempt failed, named once and decided in one place.

ssh exits 255 for its own errors and otherwise with the remote command's
status, and says what went wrong on stderr.  ``classify`` turns an exit code
and the tail of stderr into a ``Failure`` with ssh's own words; the report,
``-v`` messages and the scheduler all use these names.
"""

import enum
import re


class Kind(enum.Enum):
    REFUSED = "refused"
    TIMED_OUT = "timed out"
    AUTH = "auth"
    HOST_KEY = "host key"
    UNRESOLVED = "unknown host"
    THROTTLED = "throttled"
    CONNECTION_LOST = "connection lost"
    SSH_ERROR = "ssh error"
    # An --exec transport (srun, docker, kubectl) failed before the job
    # started: the node's fault, as a refused ssh.
    TRANSPORT = "transport"
    # A failure no node can cure (Slurm's step limit reached, a bad option in
    # the --exec template): the run stops instead of retiring every node.
    FATAL = "fatal"
    JOB_EXIT = "job exit"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"

    @property
    def transport(self):
        """True when the connection, not the job, failed."""
        return self not in (Kind.JOB_EXIT, Kind.TIMEOUT, Kind.INTERRUPTED)

    @property
    def stops_run(self):
        """True when no other node or attempt could do better."""
        return self is Kind.FATAL


# In priority order: the first pattern found in the last lines of ssh's stderr
# names the failure (a throttled connection also says "Connection reset", so
# the kex message must win).  Patterns are ssh's own messages (OpenSSH 7-9).
_PATTERNS = [
    (Kind.REFUSED, r"Connection refused"),
    (Kind.HOST_KEY, r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED"
                    r"|No .*host key is known|Host key for .* has changed"),
    (Kind.AUTH, r"Permission denied|Too many authentication failures"
                r"|No supported authentication methods"),
    (Kind.UNRESOLVED, r"Could not resolve hostname|Name or service not known"),
    # MaxStartups throttling drops connections before or during key exchange.
    (Kind.THROTTLED, r"kex_exchange_identification|ssh_exchange_identification"),
    (Kind.TIMED_OUT, r"Connection timed out|Operation timed out|timed out during banner"),
    (Kind.CONNECTION_LOST, r"Timeout, server .* not responding|closed by remote host"
                           r"|Broken pipe|Connection reset|Connection closed"),
]
_COMPILED = [(kind, re.compile(pattern.encode())) for kind, pattern in _PATTERNS]


class Failure:
    """A failed attempt: its kind and what was said (ssh's words, or the
    job's exit status)."""

    __slots__ = ("kind", "detail")

    def __init__(self, kind, detail):
        self.kind = kind
        self.detail = detail

    def __str__(self):
        if not self.kind.transport:
            return self.detail
        return "%s: %s" % (self.kind.value, self.detail)

    def __repr__(self):
        return "Failure(%s, %r)" % (self.kind, self.detail)


def _last_lines(stderr_tail, count=4):
    lines = [line.strip() for line in stderr_tail.splitlines() if line.strip()]
    return lines[-count:]


def _said(line):
    text = line.decode("utf-8", "replace")
    return text[5:] if text.startswith("ssh: ") else text


def classify(code, stderr_tail, master_gone=False):
    """The Failure for an ssh that exited with ``code`` (-N: killed by signal
    N) after writing ``stderr_tail`` (bytes, the last few KiB), or None if it
    succeeded.  ``master_gone``: the job ran through a ControlMaster that has
    since gone away (a mux client says nothing when its master dies)."""
    if code == 0:
        return None
    if code < 0:
        return Failure(Kind.INTERRUPTED, "ssh killed by signal %d" % -code)
    if code == 255:
        lines = _last_lines(stderr_tail)
        for kind, pattern in _COMPILED:
            for line in reversed(lines):
                if pattern.search(line):
                    return Failure(kind, _said(line))
        if master_gone:
            return Failure(Kind.CONNECTION_LOST, "shared connection closed")
        lines = _last_lines(stderr_tail, 1)
        return Failure(Kind.SSH_ERROR, _said(lines[0]) if lines else "ssh exited 255")
    return Failure(Kind.JOB_EXIT, "job exited %d" % code)
