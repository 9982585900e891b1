"""Records of a run: the joblog, resuming from it, and the failure report.

The joblog uses GNU parallel's columns, so tools that read parallel's joblog
read ours: one tab-separated line per finished attempt, written with a single
append so a line is never torn, even by a crash.
"""

import os

from .userfiles import open_for_writing, write_all

JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


class JoblogError(Exception):
    """The joblog cannot be read or written (message names it)."""


def _one_line(text):
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def joblog_line(seq, host, start, runtime, received, code, command):
    """One joblog record.  ``code`` is ssh's exit code (-N: killed by signal
    N, logged as Exitval 0 and Signal N, as parallel does)."""
    exitval, signum = (0, -code) if code < 0 else (code, 0)
    return "%d\t%s\t%.3f\t%.3f\t0\t%d\t%d\t%d\t%s\n" % (
        seq, host, start, runtime, received, exitval, signum, _one_line(command))


class Joblog:
    """The joblog, opened when the run starts: new (truncated, with a header)
    unless ``resume``, in which case records are appended.  Opening or
    writing it may raise ``LocalIOError``."""

    def __init__(self, path, resume=False):
        self.path = path
        self._fd = open_for_writing(path, truncate=not resume)
        try:
            if os.fstat(self._fd).st_size == 0:
                write_all(self._fd, JOBLOG_HEADER.encode(), path)
        except BaseException:
            os.close(self._fd)
            raise

    def record(self, *fields):
        write_all(self._fd, joblog_line(*fields).encode("utf-8", "backslashreplace"),
                  self.path)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def completed_in_joblog(path):
    """The (seq, command) pairs that a joblog shows completed (Exitval 0, no
    signal).  A missing joblog means nothing completed yet."""
    done = set()
    try:
        with open(path, "rb") as log:
            lines = log.read().decode("utf-8", "surrogateescape").splitlines()
    except FileNotFoundError:
        return done
    except OSError as error:
        raise JoblogError("--resume: cannot read %s: %s" % (path, error.strerror))
    for number, line in enumerate(lines, 1):
        if number == 1 and line.startswith("Seq\t"):
            continue
        fields = line.split("\t", 8)
        if len(fields) != 9:
            raise JoblogError("--resume: %s:%d: not a joblog line" % (path, number))
        try:
            seq, exitval, signum = int(fields[0]), int(fields[6]), int(fields[7])
        except ValueError:
            raise JoblogError("--resume: %s:%d: not a joblog line" % (path, number))
        if exitval == 0 and signum == 0:
            done.add((seq, fields[8]))
    return done


def job_key(job):
    """How a job is recognised in a joblog: its number and command."""
    return job.seq, _one_line(job.text)


def failure_report(retired_hosts, incomplete_jobs, limit=20):
    """Lines saying which nodes were retired, why (in ssh's words), and
    which jobs did not complete, with their attempts; at most ``limit`` of
    each (None: all)."""
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
            lines.append("  job %d %r: %s" % (job.seq, job.text, tried or "never started"))
        if len(incomplete_jobs) > limit:
            lines.append("  ... and %d more" % (len(incomplete_jobs) - limit))
    return lines
