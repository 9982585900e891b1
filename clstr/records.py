"""Records of a run: the joblog, resuming from it, and the failure report.

The joblog uses GNU parallel's columns, so tools that read parallel's joblog
read ours: one tab-separated line per finished attempt, written with a single
append so a line is never torn, even by a crash.
"""

import os

from .errors import LocalIOError
from .userfiles import open_to_own, write_all

JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


class JoblogError(Exception):
    """The joblog cannot be read or written (message names it)."""


def _one_line(text):
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def joblog_line(seq, host, start, runtime, received, exitval, signum, command):
    """One joblog record: ``exitval`` and ``signum`` as failures.judge
    decided them (Signal 15 for a job clstr stopped)."""
    return "%d\t%s\t%.3f\t%.3f\t0\t%d\t%d\t%d\t%s\n" % (
        seq, host, start, runtime, received, exitval, signum, _one_line(command))


class Joblog:
    """The joblog, opened (and locked: one run at a time) when the run
    starts, but changed only by ``start()``: new (truncated, with a header)
    unless ``resume``, in which case a torn last line is cut off and records
    are appended.  Opening may raise ``InUseError``; opening or writing it
    ``LocalIOError``."""

    def __init__(self, path, resume=False):
        self.path = path
        self._resume = resume
        self._fd, self._regular = open_to_own(path)

    def start(self):
        """Truncate, or cut a torn last line, and write the header to an
        empty joblog."""
        try:
            if self._regular:
                if self._resume:
                    cut_torn_tail(self._fd)
                else:
                    os.ftruncate(self._fd, 0)
            if not self._regular or os.fstat(self._fd).st_size == 0:
                write_all(self._fd, JOBLOG_HEADER.encode(), self.path)
        except OSError as error:
            raise LocalIOError(self.path, error)

    def record(self, *fields):
        write_all(self._fd, joblog_line(*fields).encode("utf-8", "backslashreplace"),
                  self.path)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def completed_in_joblog(path):
    """The keys (see ``job_key``) of the jobs a joblog shows completed
    (Exitval 0, no signal).  A missing joblog means nothing completed yet.

    Each completed line gives two keys, (seq, command) and (host, command):
    a job from a job list is recognised by its number, a job run on each
    node by its host, whatever the node list looks like now.

    A torn last line (see ``torn_tail``) is ignored, so its job runs again;
    a bad line anywhere else is an error naming the file and line."""
    try:
        with open(path, "rb") as log:
            data = log.read()
    except FileNotFoundError:
        return set()
    except OSError as error:
        raise JoblogError("--resume: cannot read %s: %s" % (path, error.strerror))
    done = set()
    for number, line in enumerate(_whole_lines(data), 1):
        if number == 1 and line.startswith(b"Seq\t"):
            continue
        record = _parse_record(line.split(b"\t", 8))
        if record is None:
            raise JoblogError("--resume: %s:%d: not a joblog line" % (path, number))
        done.update(record)
    return done


def torn_tail(data):
    """How many bytes at the end of a joblog's content ``data`` are a line
    torn by a failed write (a full disk): a last line without its newline,
    or with too few fields.  --resume ignores it, and must cut it off before
    appending, or the next record would run into it."""
    body = data if data.endswith(b"\n") else data[:data.rfind(b"\n") + 1]
    last = body[body.rfind(b"\n", 0, -1) + 1:]
    if last and last.count(b"\t") < 8 and not last.startswith(b"Seq\t"):
        body = body[:-len(last)]
    return len(data) - len(body)


def cut_torn_tail(fd):
    """Before appending to a joblog on --resume: cut off its torn last line,
    if any (see ``torn_tail``).  ``fd`` must be open for reading and
    writing."""
    data = os.pread(fd, os.fstat(fd).st_size, 0)
    torn = torn_tail(data)
    if torn:
        os.ftruncate(fd, len(data) - torn)


def _whole_lines(data):
    """The lines of a joblog's content, without a torn last one.  Split on
    newlines only: a command may hold CR, form feed or U+2028, which
    str.splitlines() would take for line ends."""
    body = data[:len(data) - torn_tail(data)]
    return body.split(b"\n")[:-1]


def _parse_record(fields):
    """The keys a joblog line's fields give if it records a completed
    attempt (none if not), or None if they are not a joblog line."""
    if len(fields) != 9:
        return None
    try:
        seq, exitval, signum = int(fields[0]), int(fields[6]), int(fields[7])
    except ValueError:
        return None
    if exitval or signum:
        return ()
    host, command = (field.decode("utf-8", "surrogateescape") for field in (fields[1], fields[8]))
    return (seq, command), (host, command)


def job_key(job):
    """How a job is recognised in a joblog: its command, with its host if it
    runs on each node (--on-each-node; sequence numbers there follow the node
    list, which may change between runs), else its number."""
    return (job.host if job.host is not None else job.seq), _one_line(job.text)


def failure_report(retired_hosts, incomplete_jobs, limit=20,
                   never_started=lambda job: "never started"):
    """Lines saying which nodes were retired, why (in ssh's words), and
    which jobs did not complete, with their attempts (each failure as
    ``str(Failure)``, the words of -v too); at most ``limit`` of each (None:
    all).  ``never_started(job)``: what to say of a job that never ran."""
    limit = limit or max(len(retired_hosts), len(incomplete_jobs))
    lines = []
    if retired_hosts:
        lines.append("%d node%s retired:" % (len(retired_hosts), "s" * (len(retired_hosts) != 1)))
        for host in retired_hosts[:limit]:
            lines.append("  %s: %s" % (host.name, host.reason))
        if len(retired_hosts) > limit:
            lines.append("  ... and %d more" % (len(retired_hosts) - limit))
    if incomplete_jobs:
        lines.append("%d job%s not completed:" % (len(incomplete_jobs),
                                                  "s" * (len(incomplete_jobs) != 1)))
        for job in incomplete_jobs[:limit]:
            tried = "; ".join("%s: %s" % (host, failure) for host, failure in job.failures)
            why = tried or job.rejected or never_started(job)
            lines.append("  job %d %r: %s" % (job.seq, job.brief, why))
        if len(incomplete_jobs) > limit:
            lines.append("  ... and %d more" % (len(incomplete_jobs) - limit))
    return lines


def why_never_started(job, pool, max_node_uses, halted=None):
    """The report's words for ``job``, which ended the run without an
    attempt, from ``pool`` (nodes.NodePool) as the run left it and
    ``halted`` (a halt.Halted if --halt ended the run)."""
    if job.host is not None and pool.hosts[job.host].retired:
        return "never started: %s was retired" % job.host
    if halted is not None:
        return "never started: the run was halted"
    if pool.usable:
        return "never started"
    # Slots that are neither retired nor usable were used up.
    used_up = any(not host.retired for host in pool.hosts.values())
    if used_up and max_node_uses:
        uses = "--max-node-uses %d" % max_node_uses
        if pool.retired_hosts():
            return "never started: no node left (retired, or every slot used up: %s)" % uses
        return "never started: every slot used up (%s)" % uses
    return "never started: no node left"


def halt_line(halted):
    """The report's words for a run that --halt ended (``halted``, a
    halt.Halted): the rule and the job whose end met it."""
    job = halted.job
    return "the run was halted (--halt %s) by job %d %r on %s: %s" % (
        halted.rule, job.seq, job.brief, halted.host, halted.failure or "completed")


def run_report(pool, feed, incomplete, verbose, max_node_uses, halted=None):
    """The lines of a run's failure report: always when jobs did not
    complete (``incomplete``) or the job input was not read to its end;
    with -v (``verbose``) also when nodes were retired on the way (node
    filtering does that by design, so it is not news by itself).  A run
    that --halt ended (``halted``, a halt.Halted) says so first; when it
    halted on success, what it left undone is news only with -v."""
    retired = pool.retired_hosts()
    unfinished = bool(incomplete) or not feed.input_done
    lines = [halt_line(halted)] if halted is not None else []
    news = unfinished and not (halted is not None and halted.succeeded)
    if not news and not (verbose and (retired or unfinished)):
        return lines
    lines += failure_report(retired, incomplete, limit=None if verbose > 1 else 20,
                            never_started=lambda job: why_never_started(job, pool, max_node_uses,
                                                                        halted))
    if unfinished:
        unread = "" if feed.input_done else " (job input not read to its end)"
        lines.append("%d of %d jobs were not completed%s" % (
            len(incomplete), feed.total - feed.skipped, unread))
    return lines
