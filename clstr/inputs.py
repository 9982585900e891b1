"""A template's inputs (templates.py): GNU parallel's input sources, read
as lines, and each job's values as their cartesian product (the last source
varies fastest).

Only the first source may stream: a pipe, FIFO or stdin there is read as
the run goes (jobs start before it ends), as a ``-J -`` job file is.  The
others are read whole before anything starts, since every value of the
first is combined with all of theirs.
"""

import itertools
import os

from .jobs import NUL_IN_INPUT, JobInputError, open_job_file
from .templates import VALUES

# At most this many jobs are made at a time from a source that does not
# stream (a product may be far bigger than its inputs).
BATCH = 1000


class _Values:
    """A ``:::`` group's values, as a job source is read."""

    what = "input"
    fd = None
    streaming = False

    def __init__(self, values):
        self.name = ":::"
        self._values = values
        self.expected = len(values)
        self.at_eof = False

    def read_block(self):
        self.at_eof = True
        values, self._values = self._values, []
        return list(enumerate(values, 1))

    def close(self):
        pass


class InputSource:
    """Each job's values (a tuple, one value per source), read as
    jobs.JobFeed reads a job file: ``read_block()`` returns (line number in
    the first source, values) pairs; it raises BlockingIOError while a
    streaming first source has nothing new."""

    def __init__(self, first, rest, files):
        self._first = first
        self._rest = rest  # the other sources' values, lists
        self._files = files  # every input file opened, closed with it
        self._size = 1  # combinations of the others per value of the first
        for values in rest:
            self._size *= len(values)
        self._combined = iter(())
        self._held = []  # one combination looked ahead, not yet handed out
        self.at_eof = False
        self.taken = 0

    # What JobFeed and the run ask of a job source.
    name = property(lambda self: self._first.name)
    fd = property(lambda self: self._first.fd)
    streaming = property(lambda self: self._first.streaming)
    what = property(lambda self: self._first.what)

    @property
    def expected(self):
        first = self._first.expected
        return None if first is None else first * self._size

    def read_block(self):
        batch = self._next_batch()
        if not batch and not self._first.at_eof:
            lines = self._first.read_block()
            self._combined = ((number, (value,) + others) for number, value in lines
                              for others in itertools.product(*self._rest))
            batch = self._next_batch()
        self.at_eof = self._first.at_eof and not self._held
        self.taken += len(batch)
        return batch

    def _next_batch(self):
        """The next combinations: all of a read's for a stream (the loop
        reads it again only when more arrives), else up to BATCH, one more
        held back to know whether any are left."""
        if self.streaming:
            batch, self._held = self._held + list(self._combined), []
            return batch
        batch = self._held + list(itertools.islice(self._combined, BATCH + 1 - len(self._held)))
        self._held = batch[BATCH:]
        return batch[:BATCH]

    def close(self):
        for source in self._files:
            source.close()


def _read_all(source):
    """Every value of an opened input file, read to its end now."""
    if source.fd is not None:
        os.set_blocking(source.fd, True)
    values = []
    try:
        while not source.at_eof:
            values += [value for _, value in source.read_block()]
    except OSError as error:
        raise JobInputError("cannot read input file %s: %s" % (source.name, error.strerror))
    return values


def open_inputs(groups):
    """The InputSource for ``groups`` (templates.split_inputs's, ``-a``
    files first), and the input files opened (to check that no output is
    one of them).  Raises JobInputError (a missing file, a NUL byte in a
    file read whole); closes what it opened if it does."""
    opened = []
    try:
        sources = []
        for kind, what in groups:
            if kind == VALUES:
                sources.append(_Values([os.fsencode(value) for value in what]))
            else:
                opened.append(open_job_file(what, inputs=True))
                sources.append(opened[-1])
        rest = []
        for source in sources[1:]:
            values = _read_all(source)
            _check_no_nul(source, values)
            rest.append(values)
        return InputSource(sources[0], rest, opened), opened
    except JobInputError:
        for source in opened:
            source.close()
        raise


def _check_no_nul(source, values):
    """A stream read whole is checked here (a file was when opened)."""
    for number, value in enumerate(values, 1):
        if b"\0" in value:
            raise JobInputError("%s:%d: %s" % (source.name, number, NUL_IN_INPUT))
