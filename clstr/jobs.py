"""Jobs and where they come from.

Job commands are bytes from start to end: they are read from files as bytes and
handed to ssh as bytes, so a command that is not valid UTF-8 still runs.

Job files are read as the run goes, not up front: a regular file is read a
block at a time when jobs are wanted; a pipe, FIFO, socket or terminal is read
by the event loop as lines arrive, so jobs start as soon as their line does and
a job source that never ends works.  Only a bounded number of unread jobs is
held, by count and by bytes.  Anything else (``/dev/null``, another device) cannot be watched by the
event loop (epoll refuses it) and is read whole when opened.

A line that cannot be a command (it holds a NUL byte, which no argv can) is
an error before anything starts when it is in a file that can be checked
first; in a stream it becomes a rejected job, reported and not run.
"""

import collections
import io
import os
import stat

from .templates import command_on

# Bytes read from a job source at a time.
JOB_INPUT_READ_SIZE = 65536
# Checking a regular file for NUL bytes before the run reads it this much at
# a time.
SCAN_SIZE = 1 << 20
# Stop reading a streaming source while this many of its jobs wait to run,
MAX_BUFFERED_JOBS = 10000
# or while they hold this many bytes (a generated job line may be megabytes;
# a line longer than this is still read, alone).
MAX_BUFFERED_BYTES = 64 << 20
# Messages and the -A file show at most this much of a command.
BRIEF_BYTES = 200


class JobInputError(Exception):
    """A job source cannot be used (message names it)."""


class Job:
    """One command to run, and what has happened to it so far.  A
    ``rejected`` job (the reason, naming file and line) is never run."""

    __slots__ = ("seq", "command", "host", "late", "values", "attempts", "failures", "rejected")

    def __init__(self, seq, command, host=None, late=None, values=()):
        self.seq = seq
        # With a template's {%} or {host}, as written: what the joblog and
        # --resume see (an attempt runs ``command_on(slot)``).
        self.command = command
        self.host = host  # set for --on-each-node: runs on this host only
        self.late = late  # the template's parts for command_on, or None
        self.values = values  # a template's input values (bytes) for this job
        self.attempts = 0
        self.failures = []  # (host name, Failure) per failed attempt
        self.rejected = None

    def command_on(self, slot):
        """The command an attempt of this job runs on ``slot`` (nodes.Slot):
        ``command``, with a template's ``{%}`` (the slot's number on its
        host from 1, as $CLSTR_SLOT) and ``{host}`` filled in."""
        return command_on(self.command, self.late, slot.index + 1, slot.host.name)

    @property
    def text(self):
        """The command as text, for people (undecodable bytes escaped)."""
        return self.command.decode("utf-8", "backslashreplace")

    @property
    def brief(self):
        """The command as text for messages: its first BRIEF_BYTES bytes,
        marked when cut."""
        if len(self.command) <= BRIEF_BYTES:
            return self.text
        return "%s [cut: %d bytes in all]" % (
            self.command[:BRIEF_BYTES].decode("utf-8", "backslashreplace"), len(self.command))


def numbered_job_lines(data, first=1):
    """(line number, command) for each job in ``data``, whose first line is
    number ``first``: newline and CR stripped, blank lines skipped (but
    counted)."""
    jobs = []
    for number, line in enumerate(data.split(b"\n"), first):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.strip():
            jobs.append((number, line))
    return jobs


def numbered_input_lines(data, first, at_eof):
    """(line number, line) for each line of a template's input in ``data``
    (templates.py), whose first line is number ``first``, as GNU parallel
    reads them: every line is a value, an empty one too, kept as it is
    (CR included); at the end of the input (``at_eof``) a last newline
    ends the last line, not an empty one."""
    lines = data.split(b"\n")
    if at_eof and not lines[-1]:
        lines.pop()
    return list(enumerate(lines, first))


NUL_IN_JOB = "job contains a NUL byte"
NUL_IN_INPUT = "input contains a NUL byte"


def _check_no_nul(name, blocks, inputs=False):
    """Raise JobInputError naming the line of the first NUL byte in
    ``blocks`` (consecutive pieces of one file), if there is one; else
    return how many jobs (non-blank lines; every line, for a template's
    ``inputs``) they hold, so a job count is known from the start."""
    newlines = 0
    jobs = 0
    # Whether the line the last block ended in has more than blanks so far
    # (never joined to the next block: a line may be megabytes).
    filled = False
    for block in blocks:
        at = block.find(b"\0")
        if at >= 0:
            number = newlines + block.count(b"\n", 0, at) + 1
            raise JobInputError("%s:%d: %s" % (name, number,
                                               NUL_IN_INPUT if inputs else NUL_IN_JOB))
        newlines += block.count(b"\n")
        pieces = block.split(b"\n")
        for piece in pieces[:-1]:
            jobs += inputs or filled or bool(piece.strip())
            filled = False
        filled = filled or bool(pieces[-1] if inputs else pieces[-1].strip())
    return jobs + filled


def _blocks_from(fd, offset):
    """A regular file's content from ``offset`` on, leaving the fd's own
    position where it is (stdin may be a file read from its middle)."""
    while True:
        block = os.pread(fd, SCAN_SIZE, offset)
        if not block:
            return
        offset += len(block)
        yield block


def _read_whole(name, fd, inputs=False):
    """Everything a device gives until its end, checked for NUL bytes."""
    os.set_blocking(fd, True)
    blocks = []
    while True:
        block = os.read(fd, SCAN_SIZE)
        blocks.append(block)
        if not block or b"\0" in block:  # /dev/zero would never end
            break
    data = b"".join(blocks)
    _check_no_nul(name, [data], inputs)
    return data


def is_stream(fd, mode):
    """True for what only the event loop should read (``mode`` is the fd's
    st_mode): pipes, FIFOs, sockets and terminals, whose end may be far
    away."""
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


class _FileSource:
    """Jobs from one opened file descriptor (a template's values, one a
    line, with ``inputs``).  Raises JobInputError if the source is a
    directory or, unless it is a stream, holds a NUL byte."""

    def __init__(self, name, fd, inputs=False):
        self.name = name
        self.fd = fd
        self.inputs = inputs
        self.what = "input file" if inputs else "job file"
        # The pieces of a line not complete yet, joined once it is: a line
        # of megabytes comes in many reads.
        self.partial = []
        self.at_eof = False
        self.line = 0  # lines of the source read so far
        self._whole = None  # a device's content, read when opened
        self.expected = None  # jobs a regular file holds, known at open
        self.taken = 0  # jobs read from it so far
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise JobInputError("cannot read %s %s: Is a directory" % (self.what, name))
            self.streaming = is_stream(fd, mode)
            if stat.S_ISREG(mode):
                self.expected = _check_no_nul(
                    name, _blocks_from(fd, os.lseek(fd, 0, os.SEEK_CUR)), inputs)
            elif not self.streaming:
                self._whole = io.BytesIO(_read_whole(name, fd, inputs))
        except OSError as error:
            raise JobInputError("cannot read %s %s: %s" % (self.what, name, error.strerror))

    def _read(self):
        if self._whole is not None:
            return self._whole.read(JOB_INPUT_READ_SIZE)
        return os.read(self.fd, JOB_INPUT_READ_SIZE)

    def read_block(self):
        """Read once; return (line number, command) for each command
        completed.  Raises BlockingIOError when a streaming source has
        nothing yet."""
        data = self._read()
        if not data:
            self.at_eof = True
        elif not self.streaming and len(data) < JOB_INPUT_READ_SIZE:
            # Probably the end of a regular file: look now, so the job count
            # is known from the start for the status line.
            more = self._read()
            data += more
            self.at_eof = not more
        if self.at_eof:
            complete, self.partial = b"".join(self.partial + [data]), []
        else:
            cut = data.rfind(b"\n") + 1
            if not cut:
                self.partial.append(data)
                return []
            complete, self.partial = b"".join(self.partial + [data[:cut - 1]]), [data[cut:]]
        if self.inputs:
            jobs = numbered_input_lines(complete, self.line + 1, self.at_eof)
        else:
            jobs = numbered_job_lines(complete, self.line + 1)
        self.line += complete.count(b"\n") + 1
        self.taken += len(jobs)
        return jobs

    def close(self):
        if self.fd is not None and self.fd != 0:
            os.close(self.fd)
        self.fd = None


def _cannot_read(source, error):
    return JobInputError("cannot read %s %s: %s" % (source.what, source.name, error.strerror))


def open_job_file(path, inputs=False):
    """Open a job file (``-`` is stdin) now, so a missing one, or one with a
    line that cannot be run, is reported before anything starts.  FIFOs are
    opened without blocking: waiting for a writer is the event loop's
    business.  ``inputs``: a template's input file, one value a line."""
    if path == "-":
        name, fd = "<stdin>", 0
    else:
        name = path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            raise JobInputError("cannot read %s file %s: %s"
                                % ("input" if inputs else "job", path, error.strerror))
    try:
        return _FileSource(name, fd, inputs)
    except JobInputError:
        if fd != 0:
            os.close(fd)
        raise


class JobFeed:
    """The queue of jobs to run: first any jobs put back unstarted, then
    fixed commands, then the job files in order.  ``take()`` never blocks."""

    def __init__(self, commands=(), files=(), skip=None, template=None):
        self._skip = skip  # predicate: a job already completed (--resume)
        # A templates.Template: the files (inputs.InputSource) give each
        # job's values, and the template makes its command.
        self._template = template
        self.skipped = 0
        self.rejected = []  # jobs read that cannot run (see Job.rejected)
        self._ready = collections.deque()
        self._ready_bytes = 0  # the commands' bytes in _ready
        self._retry = collections.deque()
        self._files = collections.deque(files)
        self._count = 0
        self._loop = None
        self._on_available = None
        self._watched = None
        for command in commands:
            self._add(command)

    @property
    def templated(self):
        """Whether the jobs come from a --job template and its inputs."""
        return self._template is not None

    @property
    def total(self):
        """Jobs read so far."""
        return self._count

    @property
    def expected_total(self):
        """Jobs read so far plus those regular job files not yet read hold
        (counted when they were opened), and whether that is all there will
        be (no pipe or FIFO left to read): what the status line shows."""
        expected = self._count
        known = True
        for source in self._files:
            if source.expected is None:
                known = False
            else:
                expected += max(0, source.expected - source.taken)
        return expected, known

    @property
    def input_done(self):
        """True once every source has been read to its end."""
        return not self._files

    def _add(self, command, host=None, source=None, number=0):
        """Add a job: ``command``, or the template's command for the values
        ``command`` holds."""
        self._count += 1
        late, values = None, ()
        if self._template is not None:
            values = command
            command, late = self._template.expand(self._count, values)
        job = Job(self._count, command, host, late, values)
        if b"\0" in command:
            # Only a stream gets here: other files are checked when opened,
            # and argv cannot hold a NUL.
            job.rejected = "%s:%d: %s; not run" % (source.name, number, NUL_IN_JOB)
            self.rejected.append(job)
        elif self._skip is not None and self._skip(job):
            self.skipped += 1
        else:
            self._append_ready(job)

    def _append_ready(self, job):
        self._ready.append(job)
        self._ready_bytes += len(job.command)

    def add_pinned(self, command, hosts):
        """One job per host, each to run on its own host (--on-each-node)."""
        for host in hosts:
            self._add(command, host)

    def start(self, loop, on_available):
        """Begin reading streaming sources in ``loop``; ``on_available()``
        runs when new jobs have arrived."""
        self._loop = loop
        self._on_available = on_available
        self._watch_current()

    def take(self):
        """The next job to run, or None if none is available right now."""
        if self._retry:
            return self._retry.popleft()
        if not self._ready:
            self._read_regular_file()
        if self._ready:
            job = self._ready.popleft()
            self._ready_bytes -= len(job.command)
            self._watch_current()
            return job
        return None

    def requeue(self, job):
        """Put a job whose attempt never really ran (it could not start, or
        was throttled) back at the front of the queue."""
        self._retry.append(job)

    def retry_later(self, job):
        """Put a job whose attempt failed behind every job read so far (not
        read ahead for it), as 0.1.0 did: one job that fails everywhere
        cannot retire node after node before the others run."""
        self._append_ready(job)

    @property
    def waiting_count(self):
        """How many jobs are read but not yet handed out (cheap)."""
        return len(self._retry) + len(self._ready)

    def waiting(self):
        """Jobs read but not yet handed out."""
        return list(self._retry) + list(self._ready)

    def take_pinned(self, can_run):
        """The first waiting job pinned to a host for which ``can_run(host)``."""
        for queue in (self._retry, self._ready):
            for job in queue:
                if can_run(job.host):
                    queue.remove(job)
                    if queue is self._ready:
                        self._ready_bytes -= len(job.command)
                    return job
        return None

    @property
    def empty(self):
        return not self._retry and not self._ready and not self._files

    def _read_regular_file(self):
        while not self._ready and self._files and not self._files[0].streaming:
            source = self._files[0]
            try:
                commands = source.read_block()
            except OSError as error:
                raise _cannot_read(source, error)
            self._add_from(source, commands)
            if source.at_eof:
                self._finish_source()

    def _add_from(self, source, numbered):
        for number, command in numbered:
            self._add(command, source=source, number=number)

    def _finish_source(self):
        self._files.popleft().close()

    def _watch_current(self):
        """Keep exactly the current streaming source registered with the loop
        while there is room for more jobs."""
        want = None
        if (self._loop is not None and self._files and self._files[0].streaming
                and len(self._ready) < MAX_BUFFERED_JOBS
                and self._ready_bytes < MAX_BUFFERED_BYTES):
            want = self._files[0]
        if want is self._watched:
            return
        if self._watched is not None and self._watched.fd is not None:
            self._loop.remove_reader(self._watched.fd)
        self._watched = want
        if want is not None:
            self._loop.add_reader(want.fd, self._read_stream)

    def _read_stream(self):
        source = self._files[0]
        try:
            commands = source.read_block()
        except BlockingIOError:
            return
        except OSError as error:
            raise _cannot_read(source, error)
        self._add_from(source, commands)
        if source.at_eof:
            self._loop.remove_reader(source.fd)
            self._watched = None
            self._finish_source()
            self._read_regular_file()
        self._watch_current()
        self._on_available()

    def close(self):
        if self._watched is not None and self._loop is not None and self._watched.fd is not None:
            self._loop.remove_reader(self._watched.fd)
        self._watched = None
        while self._files:
            self._finish_source()

    def read_everything(self):
        """Read every source to its end, waiting on pipes (for --dry-run)."""
        while self._files:
            source = self._files[0]
            if source.fd is not None:  # a ::: input has none
                os.set_blocking(source.fd, True)
            while not source.at_eof:
                self._add_from(source, source.read_block())
            self._finish_source()

    def drain_regular_files(self):
        """Read what is left of regular job files (cheap, never blocks), so a
        run that gave up can say how many jobs it did not run."""
        while self._files and not self._files[0].streaming:
            source = self._files[0]
            while not source.at_eof:
                self._add_from(source, source.read_block())
            self._finish_source()
