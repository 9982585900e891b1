"""Why an attempt failed, named once and decided in one place.

Transports bring evidence; this module alone decides what it means.  ssh
exits 255 for its own errors and otherwise with the remote command's status,
and says what went wrong in its log (``ssh -E FILE``, see transport/process.py) or
on stderr: ``classify`` turns an exit code and what ssh said into a
``Failure`` with ssh's own words.  ``classify_exec`` does the same for an
--exec transport, ``classify_mux`` for a session through a master (what the
master said), ``classify_master`` for a master's start, and
``classify_allocation`` for Slurm's word on the allocation.  ``judge`` then
decides how an attempt ended, from the transport's failure and the wrapper's
reports.

The kinds' names (``Kind`` values) are the one vocabulary of failures: ``-v``
messages, the failure report and ``--output-dir``'s index.tsv print them, the
scheduler decides by them, and README.md lists them (a test keeps the two in
step).
"""

import enum
import os
import re


class Kind(enum.Enum):
    REFUSED = "refused"
    # No TCP connection or no SSH banner within ConnectTimeout; not to be
    # confused with TIMEOUT, a job that ran past --timeout.
    CONNECT_TIMEOUT = "connect timeout"
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
    # A command too big for a command line that the node could not store
    # (it comes on stdin, transport/wrapper.py): the job never ran, and it fails alone.
    NOT_DELIVERED = "not delivered"
    # A --send file the node could not store, or a --return file it could
    # not give (filecopy.py): the node's own words, like a job's exit.
    FILE = "file"
    JOB_EXIT = "job exit"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"

    @property
    def transport(self):
        """True when the connection, not the job, failed."""
        return self not in (Kind.JOB_EXIT, Kind.FILE, Kind.TIMEOUT, Kind.INTERRUPTED,
                            Kind.NOT_DELIVERED)

    @property
    def stops_run(self):
        """True when no other node or attempt could do better."""
        return self is Kind.FATAL


# In priority order: the first pattern found in the last lines ssh said names
# the failure (a throttled connection also says "Connection reset", so
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
    (Kind.CONNECT_TIMEOUT, r"Connection timed out|Operation timed out|timed out during banner"),
    (Kind.CONNECTION_LOST, r"Timeout, server .* not responding|closed by remote host"
                           r"|Broken pipe|Connection reset|Connection closed"),
]
_COMPILED = [(kind, re.compile(pattern.encode())) for kind, pattern in _PATTERNS]


class Failure:
    """A failed attempt: its kind, what was said (ssh's words, or clstr's
    when clstr stopped the job; may be empty) and, for a job's own exit, its
    exit status.

    Printed as ``label: detail`` (just the label when there is no detail),
    the same in ``-v`` messages and the failure report; index.tsv shows the
    label alone."""

    __slots__ = ("kind", "detail", "status")

    def __init__(self, kind, detail="", status=None):
        self.kind = kind
        self.detail = detail
        self.status = status

    @property
    def label(self):
        """The kind's name, with the exit status for a job's own exit
        ("job exit 3")."""
        if self.status is not None:
            return "%s %d" % (self.kind.value, self.status)
        return self.kind.value

    def __str__(self):
        return "%s: %s" % (self.label, self.detail) if self.detail else self.label

    def __repr__(self):
        return "Failure(%s, %r, %r)" % (self.kind, self.detail, self.status)


class MasterKilled(Failure):
    """A connection lost because clstr killed the ControlMaster carrying it
    (it stopped answering, transport/masters.py): whether the job ended, and how,
    is unknown, whatever clstr had done to the attempt before (a --timeout
    stop included), so it stays a lost connection: requeued, never a
    ``timeout``."""

    __slots__ = ()

    def __init__(self, detail):
        Failure.__init__(self, Kind.CONNECTION_LOST, detail)


def job_exit(status):
    """The Failure of a job that exited with ``status``; None for 0."""
    return None if status == 0 else Failure(Kind.JOB_EXIT, status=status)


def not_delivered(stored, size):
    """The Failure of a job whose command of ``size`` bytes came on stdin and
    of which the node stored only ``stored`` bytes."""
    return Failure(Kind.NOT_DELIVERED, "the node stored %d of %d bytes of the command"
                   % (stored, size))


# clstr's own reasons for stopping an attempt.

def stopped_by_clstr():
    """An attempt clstr stopped (Ctrl-C, a local I/O failure, the run's end)."""
    return Failure(Kind.INTERRUPTED, "stopped by clstr")


def stopped_by_halt(rule):
    """An attempt stopped because --halt ``rule`` (a halt.HaltRule) was met."""
    return Failure(Kind.INTERRUPTED, "stopped by --halt %s" % (rule,))


def timed_out(seconds):
    """An attempt stopped for running past --timeout ``seconds``."""
    return Failure(Kind.TIMEOUT, "stopped after %gs" % seconds)


def start_overdue(waited, slurm):
    """An attempt whose job had not started ``waited`` seconds after its
    transport did.  Under Slurm (``slurm``) that is a step still pending (the
    controller is busy, no node is dead): transient, like a throttled
    connection; otherwise the node does not answer."""
    kind = Kind.THROTTLED if slurm else Kind.CONNECT_TIMEOUT
    return Failure(kind, "the job had not started after %gs" % waited)


def cannot_start_ssh(error):
    """ssh itself could not be started (the OSError ``error``)."""
    return Failure(Kind.SSH_ERROR, "cannot start ssh: %s" % error.strerror)


# --- evidence ---------------------------------------------------------------

# Bytes of what a transport said (its stderr, ssh's log) kept as evidence:
# the last few lines are all that is read.
TAIL_BYTES = 4096


def read_log_tail(path, remove=False):
    """The last TAIL_BYTES bytes of the log file at ``path`` (b"" if it
    cannot be read, as when ssh never wrote it); ``remove``: delete the file
    once read."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - TAIL_BYTES))
            tail = log.read()
        if remove:
            os.unlink(path)
    except OSError:
        return b""
    return tail


def _last_lines(text, count=4):
    """The last ``count`` lines of ``text`` (bytes) that are not blank,
    stripped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-count:]


def _said(line):
    """ssh's words from one line of its log: without its "ssh: " prefix, and
    without a final full stop, since they are joined with others by "; "
    ("Permission denied (publickey).; given up")."""
    text = line.decode("utf-8", "replace")
    if text.startswith("ssh: "):
        text = text[5:]
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    return text


def _named(lines):
    """The Failure the first pattern (in priority order) found in ``lines``
    names, or None."""
    for kind, pattern in _COMPILED:
        for line in reversed(lines):
            if pattern.search(line):
                return Failure(kind, _said(line))
    return None


def classify(code, stderr_tail, master_gone=False, log_tail=b""):
    """The Failure for an ssh that exited with ``code`` (-N: killed by signal
    N), or None if it succeeded.  ``log_tail`` and ``stderr_tail`` (bytes,
    the last few KiB) are what ssh wrote to its log file (-E) and to stderr:
    with -E, ssh logs every message, errors included, to the file; a few
    (such as "Connection to H closed by remote host.") still go to stderr,
    which also carries the job's own stderr, so the log is read first.
    ``master_gone``: the job ran through a ControlMaster that has since gone
    away (a mux client says nothing when its master dies)."""
    if code == 0:
        return None
    if code < 0:
        return Failure(Kind.INTERRUPTED, "ssh killed by signal %d" % -code)
    if code != 255:
        return job_exit(code)
    log_lines, stderr_lines = _last_lines(log_tail), _last_lines(stderr_tail)
    failure = _named(log_lines) or _named(stderr_lines)
    if failure is not None:
        return failure
    if master_gone:
        return Failure(Kind.CONNECTION_LOST, "shared connection closed")
    last = (log_lines or stderr_lines)[-1:]
    return Failure(Kind.SSH_ERROR, _said(last[0]) if last else "ssh exited 255")


def refused_log_file(code, stdout_seen, stderr_tail):
    """Whether an ssh command that never created its -E log refused the
    option, as a front end that does not know it does: it failed as ssh
    fails (255) or said so, and nothing of a job came out."""
    return code != 0 and not stdout_seen and (code == 255 or b"-E" in stderr_tail
                                              or b"-- E" in stderr_tail)


# Failures of a ControlMaster's start that say the host cannot be reached or
# will not have us; any other failure of a master (ssh error, a front end's
# own exit status) is no verdict on the host.
CONNECTION_FAILURES = frozenset((Kind.REFUSED, Kind.CONNECT_TIMEOUT, Kind.AUTH, Kind.HOST_KEY,
                                 Kind.UNRESOLVED, Kind.THROTTLED, Kind.CONNECTION_LOST))


def classify_master(code, log_tail, has_socket):
    """How the ssh starting a ControlMaster ended, from its exit status
    ``code``, its log's tail and whether its control socket exists:
    ``(failure, unavailable)``.  ``failure``: the host's fault (a connection
    failure), None when the host answered; ``unavailable``: why connection
    sharing does not work there (None: the master is up).  Connection
    sharing is an optimisation, never a reason to lose a node: a master
    that exits 0 without a socket, or fails for a reason that is not a
    connection failure (e.g. a front end rejecting ControlMaster), lets a
    direct connection decide."""
    failure = classify(code, log_tail)
    if failure is None:
        return None, None if has_socket else "the master exited without a control socket"
    if failure.kind not in CONNECTION_FAILURES:
        return None, "the master failed: %s" % failure.detail
    return failure, None


# The mux client's words (transport/muxclient.py) for a session's end
# without an exit status: evidence, classified below.
class MuxError(enum.Enum):
    """Why a session through a master did not end with an exit status.  What
    each means for the node:

    - ``CONNECT_FAILED``: the master is not there (socket missing, refused:
      a stale socket, not accepting), dropped us before its hello, or did
      not say hello within the reply timeout (a stopped or hung master).
      Nothing ran.  The master is gone or useless, not necessarily the node:
      run the job another way (a new master, or ``ssh``'s own connection).
    - ``SESSION_REFUSED``: the master answered MUX_S_FAILURE or
      MUX_S_PERMISSION_DENIED; the detail is its reason.  Nothing ran.  With
      9.2p1 the reasons are "Session open refused by peer" (sshd refused the
      channel: MaxSessions reached on that connection, or sshd out of
      resources): the connection is up and the node answers, so it is
      transient, like a throttled connection: back off and retry, retire only
      if it persists (MaxSessions 0 would make it permanent); "Permission
      denied" (only with ControlMaster ask/autoask, never for clstr's own
      masters); "did not receive file descriptors" / "Multiple sessions not
      supported" (a bug on our side).
    - ``CONNECTION_LOST``: the master closed the connection without an exit
      status after the request was sent (the master died, or its connection
      to the node dropped), or did not answer the request within the reply
      timeout.  The job may have run in part: a connection
      failure of the attempt, classified like ssh's "connection lost".
    - ``PROTOCOL_MISMATCH``: the master speaks a version or sends a message
      this module does not know, before the session opened.  Nothing ran (the
      request is sent only to a master that said version 4).  Fall back to
      the ssh client for this master, and say so once.
    - ``ABANDONED``: ``MuxAttempt.stop`` gave up waiting and dropped the
      session; only ever the result of the caller's own stop.
    """

    CONNECT_FAILED = "master unreachable"
    SESSION_REFUSED = "session refused"
    CONNECTION_LOST = "connection lost"
    PROTOCOL_MISMATCH = "protocol mismatch"
    ABANDONED = "abandoned"


def classify_mux(error, detail, master_killed=None):
    """The Failure of a session through a master that ended without an exit
    status (``error``, a muxclient.MuxError, and the master's ``detail``)
    after its request was sent.  ``master_killed``: clstr killed the master
    for not answering (what it said then), which makes it a lost
    connection whatever else happened (``MasterKilled``).

    A refused session (sshd's MaxSessions) is transient, like a throttled
    connection; a session dropped without an exit status is a lost
    connection, as when a plain ssh is cut off; one clstr abandoned was
    stopped by clstr."""
    if master_killed is not None:
        return MasterKilled(master_killed)
    if error is MuxError.SESSION_REFUSED:
        return Failure(Kind.THROTTLED, "session refused: %s" % detail)
    if error is MuxError.CONNECTION_LOST:
        return Failure(Kind.CONNECTION_LOST, "shared connection lost: %s" % detail)
    return stopped_by_clstr()


# Said by an --exec transport before the job started, these fail on every
# node alike, so retiring nodes one by one would only hide them: the run
# stops.  All are the transport's own final errors (srun of Slurm 22.05,
# docker and kubectl's option parser), not messages after which they retry:
_NO_NODE_CAN_CURE = re.compile(
    # MaxStepCount reached: the allocation takes no more steps.
    rb"Step limit reached for this job"
    # The allocation ($SLURM_JOB_ID, --jobid) is unknown or already ended.
    rb"|Invalid job id specified|Job/step already completing or completed"
    # The template asks for a partition, account or QOS that is not there.
    rb"|Invalid partition name specified|Invalid account or account/partition combination"
    rb"|Invalid qos specification"
    # The template's options are wrong: srun (getopt), docker and kubectl.
    rb"|unrecognized option|invalid option|unknown (?:shorthand )?flag")
# Deliberately not here: "Job step creation temporarily disabled, retrying"
# (srun waits and retries by itself), "Unable to contact slurm controller"
# (may pass once slurmctld is back), "Invalid node name specified" and
# "No such container" (one node's fault: that node is retired).


def classify_exec(code, stderr_tail):
    """The transport's own failure, for an exec transport (transport/exec.py)
    that exited with ``code`` (-N: killed by signal N) before its job
    started (``judge`` reads it only then), or None if it exited 0.
    ``stderr_tail``: the last few KiB of its stderr (bytes).

    ``Kind.FATAL`` if no node can cure it, else ``Kind.TRANSPORT`` (the node
    is at fault, like a refused ssh), with the transport's last stderr line
    as the reason."""
    if code == 0:
        return None
    if code < 0:
        return Failure(Kind.INTERRUPTED, "transport killed by signal %d" % -code)
    lines = _last_lines(stderr_tail)
    for line in reversed(lines):
        if _NO_NODE_CAN_CURE.search(line):
            return Failure(Kind.FATAL, line.decode("utf-8", "replace"))
    if lines:
        return Failure(Kind.TRANSPORT, lines[-1].decode("utf-8", "replace"))
    return Failure(Kind.TRANSPORT, "exited %d before the job started" % code)


def classify_allocation(job_id, code, said):
    """What ``squeue -h -j JOB_ID -o %T`` exiting with ``code`` after
    saying ``said`` (bytes) means for the run under --slurm: a FATAL Failure
    if allocation ``job_id`` no longer runs (revoked, expired, cancelled:
    no node can run jobs any more), None if it runs or if the controller
    cannot tell (then the attempt's own failure stands)."""
    words = said.split()
    if code == 0 and words == [b"RUNNING"]:
        return None
    if code == 0 or b"Invalid job id" in said:
        now = words[0].decode("ascii", "replace") if words else "gone"
        return Failure(Kind.FATAL, "Slurm allocation %s is %s" % (job_id, now))
    return None


# The joblog's Exitval of an attempt whose job's own status is not known (no
# end report): what ssh says for a connection it lost.
UNKNOWN_STATUS = 255
# The joblog's Signal of a job clstr stopped (--timeout, Ctrl-C).
STOPPED_SIGNAL = 15


class Verdict:
    """How an attempt ended, decided once (``judge``): ``failure`` (None for
    success) and the joblog's Exitval and Signal."""

    __slots__ = ("failure", "exitval", "signal")

    def __init__(self, failure, exitval, signal=0):
        self.failure = failure
        self.exitval = exitval
        self.signal = signal


def judge(transport_failure, code, started, status, stopped=None, undelivered=None):
    """The Verdict on one attempt, from evidence clstr controls.

    ``started`` and ``status``: the wrapper's start report came, and the
    status in its end report (None: none came; see endreport.py).
    ``transport_failure``: what the transport's own end says (a Failure from
    ``classify`` or ``classify_exec``, or None), read only when the job did
    not report its end.  ``code``: the transport's exit status (-N: killed by
    signal N; None when there is none).  ``stopped``: clstr's own reason
    when it stopped the attempt (a Failure: timeout, interrupted, or a start
    deadline), else None.  ``undelivered``: the Failure (``not_delivered``)
    when the wrapper reported it could not store the job's command.

    - With an end report, the job's status is the result, whatever the
      transport said (ssh's 255 after the job's own ``exit 255``, srun's 0):
      a success, a job exit, or clstr's reason if clstr stopped it.
    - The command never reached the node whole: that job's failure alone
      (unless clstr stopped it meanwhile).
    - Stopped by clstr without one: clstr's reason (the job's end was not
      heard of in the grace, or it never started).
    - Started without an end report: the connection was lost (the job may
      have run in part; it runs again), unless the transport was killed
      here by a signal (this machine's doing, not the node's) or says no
      node can do better.
    - Never started: the transport's failure (a refused ssh, an srun that
      could not reach the node), or, if the transport thinks all went well,
      a transport failure all the same: the wrapper never ran."""
    if status is not None:
        if stopped is not None:
            return Verdict(stopped, status, STOPPED_SIGNAL)
        return Verdict(job_exit(status), status)
    if undelivered is not None and stopped is None:
        return Verdict(undelivered, UNKNOWN_STATUS)
    if isinstance(transport_failure, MasterKilled):
        # Its frozen master was killed: the job's fate is unknown, whatever
        # clstr had done to the attempt (a --timeout stop included).
        return Verdict(transport_failure, UNKNOWN_STATUS)
    if stopped is not None:
        return Verdict(stopped, UNKNOWN_STATUS, STOPPED_SIGNAL)
    if transport_failure is not None and transport_failure.kind is Kind.FATAL:
        return Verdict(transport_failure, UNKNOWN_STATUS)
    if code is not None and code < 0:
        return Verdict(Failure(Kind.INTERRUPTED, "transport killed by signal %d" % -code),
                       UNKNOWN_STATUS)
    transport_said = transport_failure is not None and transport_failure.kind.transport
    if started:
        detail = (transport_failure.detail if transport_said and transport_failure.detail
                  else "no end report from the job (transport exit %s)" % _code_text(code))
        return Verdict(Failure(Kind.CONNECTION_LOST, detail), UNKNOWN_STATUS)
    if transport_said:
        return Verdict(transport_failure, UNKNOWN_STATUS)
    return Verdict(Failure(Kind.SSH_ERROR, "the job never started (transport exit %s)"
                           % _code_text(code)), UNKNOWN_STATUS)


def judge_copy(transport_failure, code, reports, stopped, said):
    """The failure (None: success) of one of clstr's file copies
    (filecopy.py), from the same evidence as ``judge``: ``reports`` (its
    ReportReader: the copy's start, and its end with status 0 when the
    file was stored whole) and what the transport said.  A copy that
    reported failing is the node's refusal (``Kind.FILE``), in its own
    words: the last line of ``said``, the copy's stderr (a full disk, a
    directory it may not write, a missing file)."""
    verdict = judge(transport_failure, code, reports.started, reports.status, stopped)
    failure = verdict.failure
    if failure is None or failure.kind is not Kind.JOB_EXIT:
        return failure
    lines = _last_lines(said, 1)
    words = lines[0].decode("utf-8", "replace") if lines else "status %d" % failure.status
    return Failure(Kind.FILE, words)


def returned(verdict, failure):
    """The Verdict on an attempt whose job completed (``verdict``) once
    its --return files were fetched: ``failure`` None when all arrived,
    else what kept one away (a FILE failure in the node's words, a lost
    connection, clstr's own stop).  Its joblog Exitval is then 255, as for
    a job that reported no status: ``$7 == 0`` still lists exactly the
    completed attempts."""
    if failure is None:
        return verdict
    signal = STOPPED_SIGNAL if failure.kind is Kind.INTERRUPTED else 0
    return Verdict(failure, UNKNOWN_STATUS, signal)


def _code_text(code):
    return "status unknown" if code is None else "%d" % code


# Before any job has started, the same words from this many distinct nodes'
# transports mean that the transport is broken on this machine (a Docker
# daemon that is down), not each node: the run stops instead of retiring
# every node one by one.
SAME_FAILURE_NODES = 3


class FirstFailures:
    """The --exec transports' failures seen before any job of the run has
    started, by what they said."""

    def __init__(self):
        self._hosts = {}
        self._job_started = False

    def job_started(self):
        self._job_started = True
        self._hosts.clear()

    def no_node_can_cure(self, host, failure):
        """Note ``failure`` of ``host``; once the same words came from
        SAME_FAILURE_NODES distinct nodes before any job started, the nodes
        that said them (not to blame after all), else an empty set.  Decided
        by the words being the same, never by what they say (with ``docker
        -H ssh://{host}`` a daemon that is down is one node's fault, and
        says which)."""
        if self._job_started or failure.kind is not Kind.TRANSPORT:
            return set()
        hosts = self._hosts.setdefault(failure.detail, set())
        hosts.add(host)
        return hosts if len(hosts) >= SAME_FAILURE_NODES else set()
