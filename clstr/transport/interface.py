"""The transport seam: how a run's attempts reach their nodes.

A run has one ``Transport`` (chosen once from the plan,
transport/choice.py), which prepares what its attempts need (masters),
opens each attempt, says what an attempt costs in open files, describes an
attempt for ``--dry-run`` with the code that opens it, and shuts down.  Each
attempt reports to one ``AttemptHandler``; a transport with masters tells
the run about them through ``RunEvents``.  The run never knows which kind
ran an attempt.  Kinds, one module each:

- ``ssh``: a local ``ssh`` process per attempt (``--no-multiplex``, ``-E``,
  and hosts whose connection cannot be shared);
- ``mux``: clstr itself speaks OpenSSH's multiplexing protocol to a host's
  ControlMaster, so an attempt costs no local process;
- ``exec``: a local ``--exec`` process per attempt (srun, docker exec,
  kubectl exec);
- ``slurm``: ``--slurm``, srun in the allocation clstr runs in.

Every attempt gets its own stdin pipe whose write end only clstr holds.
clstr writes on it only a command too big for a command line (wrapper.py
``stdin_payload``), through ``StdinWriter``, before the job starts; closing
it is how clstr stops that attempt, whatever the transport: the remote
wrapper takes EOF as "stop the job" (see wrapper.py) and still reports how
the job ended (endreport.py).  A transport that has not
ended ``stop_grace(started)`` seconds later (an ssh still connecting, a hung
link) is sent SIGTERM, or its mux session dropped.
"""

import os

from .endreport import ReportReader

# How long a stopped attempt may take to end.  A job that has started gets
# the time its wrapper takes to stop it (TERM, then KILL 2 s later) and to
# send its end report back, so that its status is not lost; one that has
# not started (a connection still being made) has nothing to report, and
# is cut short so that Ctrl-C ends a run at once.
STARTED_STOP_GRACE = 3.0
UNSTARTED_STOP_GRACE = 0.2


# A master, or an attempt's job, that has not started --connect-timeout plus
# this long after it was started is given up (a transport that hangs before
# the job: a silent host behind --exec, a login that never ends, an ssh
# that fell back to a plain session).  ssh's own ConnectTimeout bounds only
# the TCP connection and the banner; this leaves room for a slow key
# exchange, login and rc files.
START_GRACE = 15.0

def stop_grace(started):
    """The grace for stopping an attempt whose job has (not) started."""
    return STARTED_STOP_GRACE if started else UNSTARTED_STOP_GRACE


# Bytes written to a stdin pipe at a time (what a pipe holds).
WRITE_SIZE = 65536


class StdinWriter:
    """Writes bytes (``data``, then each ``send``'s) to the pipe ``fd`` from
    ``loop`` as fast as its reader takes them, in order, never blocking the
    loop (a pipe holds 64 KiB, a big job's command megabytes).  ``cancel()``
    must come before ``fd`` is closed.  A reader that has gone (EPIPE) ends
    the writing quietly: how the attempt ends says why."""

    __slots__ = ("_loop", "_fd", "_rest", "_watched")

    def __init__(self, loop, fd, data):
        self._loop = loop
        self._fd = fd
        self._rest = b""
        self._watched = False
        os.set_blocking(fd, False)
        self.send(data)

    def send(self, data):
        """Write ``data`` after what is not written yet."""
        if self._fd is None:
            return
        if self._rest:
            self._rest = bytes(self._rest) + data
            return
        # Most writes (a worker's frames) fit in the pipe at once: the loop
        # is asked to wait only for what does not.
        self._rest = memoryview(data)
        self._write()
        if self._rest and not self._watched:
            self._watched = True
            self._loop.add_writer(self._fd, self._write)

    def _write(self):
        try:
            written = os.write(self._fd, self._rest[:WRITE_SIZE])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.cancel()
            return
        self._rest = self._rest[written:]
        if not self._rest and self._watched:
            self._watched = False
            self._loop.remove_writer(self._fd)

    def cancel(self):
        if self._fd is not None:
            if self._watched:
                self._loop.remove_writer(self._fd)
            self._fd = self._rest = None


class StdinPipe:
    """An attempt's stdin: the read end goes to the transport (then is closed
    here), the write end stays with clstr until ``close()`` stops the job.
    ``stdin_data`` (``stdin_ends``): a local file makes it the file, with
    no write end."""

    __slots__ = ("read_end", "write_end", "_writer")

    def __init__(self, stdin_data=None):
        self.read_end, self.write_end = stdin_ends(stdin_data)
        self._writer = None

    def send(self, loop, data):
        """Write ``data`` to the job's stdin from ``loop`` (``StdinWriter``),
        after what an earlier ``send`` has not written yet."""
        self._writer = write_after(loop, self._writer, self.write_end, data)

    def handed_over(self):
        """The transport has its own copy of the read end now."""
        if self.read_end is not None:
            os.close(self.read_end)
            self.read_end = None

    def close(self):
        """EOF for the job: the remote wrapper stops it."""
        self.handed_over()
        if self._writer is not None:
            self._writer.cancel()
        if self.write_end is not None:
            os.close(self.write_end)
            self.write_end = None

    @property
    def closed(self):
        return self.write_end is None


class AttemptHandler:
    """What a transport tells the run about one attempt (one handler per
    attempt): its output, and then exactly one of ``ended`` or
    ``unstarted``."""

    # No attributes: a subclass may keep its instances small (__slots__).
    __slots__ = ()

    def output(self, stream, data):
        """Raw bytes the job wrote on ``stream`` (1 or 2)."""
        raise NotImplementedError

    def ended(self, code, failure):
        """The attempt is over and its output all delivered: ``code`` is the
        exit status (-N: a local process killed by signal N; None when there
        is none), ``failure`` None for success, else a ``failures.Failure``."""
        raise NotImplementedError

    def unstarted(self, error):
        """The attempt turned out never to have started (after ``open``
        returned): ``error`` is the OSError that kept it from starting (out
        of fds or processes), or None when its connection is being made
        again (a master that had gone): its slot then waits, held, until
        the run's ``master_up`` for it."""
        raise NotImplementedError


def write_after(loop, writer, fd, data):
    """A StdinWriter writing ``data`` to ``fd`` after what ``writer`` (the
    last one for ``fd``, or None) has not written yet: ``writer`` itself."""
    if writer is None:
        return StdinWriter(loop, fd, data)
    writer.send(data)
    return writer


def stdin_ends(stdin_data):
    """The (read end, write end) of a session's stdin for ``stdin_data``:
    a pipe, whose write end clstr keeps (None or bytes: what to write
    first); or, for a local file (a --send copy's, sendfiles.py: its
    ``open()``), the file itself, opened afresh, and no write end: the
    transport (ssh, a master) reads it to its end, as ``ssh host cmd <
    file`` would, and that end is the EOF the copy reads to.  Raises
    OSError (a pipe), LocalIOError (the file)."""
    if stdin_data is None or isinstance(stdin_data, bytes):
        return os.pipe()
    return stdin_data.open(), None


class RunEvents:
    """What a transport tells the run about the connections it prepares
    (masters), so that the run decides what they mean for their nodes."""

    def master_up(self, host, group, unavailable):
        """The master of ``group`` on ``host`` answered: the slots it serves
        (``Transport.master_of``) may take jobs.  ``unavailable``: None when
        the master is up, else why connection sharing does not work there
        (the host's jobs connect on their own)."""
        raise NotImplementedError

    def master_failed(self, host, group, failure):
        """The master of ``group`` on ``host`` could not connect
        (``failure``, a ``failures.Failure``)."""
        raise NotImplementedError

    def master_gone(self, host, group, expired):
        """A job found the master of ``group`` on ``host`` gone (nothing
        ran); ``expired``: it had left by itself after carrying nothing for
        its idle time, as it should.  Returns whether to start another
        (else the host's jobs connect on their own)."""
        raise NotImplementedError

    def masters_short_of(self, covered, error):
        """A master could not start for want of fds or processes
        (``error``): it waits until ``Transport.resources_freed``; masters
        up or starting serve ``covered`` slots."""
        raise NotImplementedError

    def note(self, text):
        """Something worth saying with -v (a line of clstr's own)."""
        raise NotImplementedError


class Transport:
    """How one run's attempts reach their nodes (one object per run).

    ``attempt`` arguments have ``job``, ``slot``, ``prelude`` (the shell
    text its job's process runs first, transport/prelude.py: every
    transport has the wrapper run it) and ``reports`` (the
    ``ReportReader`` from ``report_reader()``, through which the attempt's
    stderr passes); ``handler`` is the attempt's AttemptHandler."""

    # Open files clstr itself holds for each running attempt: the read ends
    # of its stdout and stderr pipes and the write end of its stdin pipe
    # (the ends a child or master gets are closed once handed over).
    fds_per_attempt = 3
    # Whether attempts go through masters that prepare() starts (slots
    # then wait, held, until their master is up).
    has_masters = False
    # Whether a master waits for resources (see RunEvents.masters_short_of).
    waiting_for_resources = False

    def report_reader(self):
        """A new attempt's ReportReader: the transport's own words before
        the job starts and after it ended reach the job's stderr."""
        return ReportReader()

    def prepare(self, slots_in_demand):
        """Start what the attempts need now, before a round of starts:
        ``slots_in_demand()`` says how many slots the run could use at once
        (asked only when there is something left to start)."""

    def master_of(self, slot):
        """The group of the master serving ``slot`` (None: its attempts
        connect on their own)."""
        return None

    def start_master(self, host, group):
        """Start the master of ``group`` on ``host`` (again); the run hears
        of it through RunEvents."""
        raise NotImplementedError

    def resources_freed(self):
        """Something ended: what waited for fds or processes may try again."""

    def open(self, attempt, handler):
        """Start ``attempt``; returns its Session.  Raises OSError if
        nothing could start (out of fds or processes, no ssh)."""
        raise NotImplementedError

    def describe(self, job, slot, prelude):
        """The argv ``open`` would run for ``job`` on ``slot`` after
        ``prelude`` (--dry-run)."""
        raise NotImplementedError

    def remote_process(self, slot, handler, words, reports, stdin_data=None):
        """A Session on ``slot``'s node running ``words`` (bytes: the argv
        of a program of clstr's own, such as the --send and --return copies
        of filecopy.py; never a job: no wrapper, no login shell's parsing
        of it), over the connection the slot's attempts use (its master, if
        any), reporting to ``handler``, its stderr through ``reports`` (a
        ReportReader from ``report_reader()``), ``stdin_data`` (bytes written
        on its stdin first, or a local file that is its stdin:
        ``stdin_ends``).  Raises OSError as ``open`` does (LocalIOError for
        a file that cannot be opened)."""
        raise NotImplementedError

    def describe_remote(self, slot, words):
        """The argv ``remote_process`` would run (--dry-run)."""
        raise NotImplementedError

    def shutdown(self):
        """The run is over: stop what ``prepare`` started."""


class Session:
    """One running attempt, as the run sees it; it reports to its
    AttemptHandler.  Subclasses implement ``stop()``, ``kill()``,
    ``pause()`` and ``resume()``."""

    __slots__ = ()

    def stop(self, grace):
        """Stop the job (on the node too); ``ended`` follows, at the latest
        about ``grace`` seconds later."""
        raise NotImplementedError

    def kill(self):
        """Leave now: the run is over (nothing more is reported)."""
        raise NotImplementedError

    def pause(self):
        """Stop reading output (the job blocks on a full pipe)."""
        raise NotImplementedError

    def resume(self):
        raise NotImplementedError


class NoSession(Session):
    """A session that never started (its end was already dealt with)."""

    def send(self, data):
        pass

    def stop(self, grace):
        pass

    def kill(self):
        pass

    def pause(self):
        pass

    def resume(self):
        pass
