"""The transport seam: how one attempt of a job reaches its node.

The runner starts an attempt through a transport and learns, through two
callbacks, what it said and how it ended; it never knows which kind ran it.
Kinds:

- ``localprocess.ssh_session``: a local ``ssh`` process per attempt
  (``--no-multiplex``, ``-E``, and hosts whose connection cannot be shared);
- ``localprocess.exec_session``: a local ``--exec`` process per attempt
  (srun, docker exec, kubectl exec);
- ``muxsession``: clstr itself speaks OpenSSH's multiplexing protocol to a
  host's ControlMaster, so an attempt costs no local process.

Every attempt gets its own stdin pipe whose write end only clstr holds.
clstr writes on it only a command too big for a command line (ssh.py
``stdin_payload``), through ``StdinWriter``, before the job starts; closing
it is how clstr stops that attempt, whatever the
transport: the remote wrapper takes EOF as "stop the job" (see ssh.py) and
still reports how the job ended (endreport.py).  A transport that has not
ended ``stop_grace(started)`` seconds later (an ssh still connecting, a hung
link) is sent SIGTERM, or its mux session dropped.
"""

import os

# How long a stopped attempt may take to end.  A job that has started gets
# the time its wrapper takes to stop it (TERM, then KILL 2 s later) and to
# send its end report back, so that its status is not lost; one that has
# not started (a connection still being made) has nothing to report, and
# is cut short so that Ctrl-C ends a run at once.
STARTED_STOP_GRACE = 3.0
UNSTARTED_STOP_GRACE = 0.2


def stop_grace(started):
    """The grace for stopping an attempt whose job has (not) started."""
    return STARTED_STOP_GRACE if started else UNSTARTED_STOP_GRACE


# Bytes written to a stdin pipe at a time (what a pipe holds).
WRITE_SIZE = 65536


class StdinWriter:
    """Writes ``data`` (bytes) to the pipe ``fd`` from ``loop`` as fast as
    its reader takes it, never blocking the loop (a pipe holds 64 KiB, a big
    job's command megabytes).  ``cancel()`` must come before ``fd`` is
    closed.  A reader that has gone (EPIPE) ends the writing quietly: how
    the attempt ends says why."""

    __slots__ = ("_loop", "_fd", "_rest")

    def __init__(self, loop, fd, data):
        self._loop = loop
        self._fd = fd
        self._rest = memoryview(data)
        os.set_blocking(fd, False)
        loop.add_writer(fd, self._write)

    def _write(self):
        try:
            written = os.write(self._fd, self._rest[:WRITE_SIZE])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.cancel()
            return
        self._rest = self._rest[written:]
        if not self._rest:
            self.cancel()

    def cancel(self):
        if self._fd is not None:
            self._loop.remove_writer(self._fd)
            self._fd = self._rest = None


class StdinPipe:
    """An attempt's stdin: the read end goes to the transport (then is closed
    here), the write end stays with clstr until ``close()`` stops the job."""

    __slots__ = ("read_end", "write_end", "_writer")

    def __init__(self):
        self.read_end, self.write_end = os.pipe()
        self._writer = None

    def send(self, loop, data):
        """Write ``data`` to the job's stdin from ``loop`` (``StdinWriter``)."""
        self._writer = StdinWriter(loop, self.write_end, data)

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


class Session:
    """One running attempt, as the runner sees it.

    ``on_output(stream, data)`` gets raw chunks (stream 1 or 2);
    ``on_end(code, failure)`` runs once, after the attempt's output is all
    delivered: ``code`` is the exit status (-N: a local process killed by
    signal N; None when there is none) and ``failure`` None for success, else
    a ``failures.Failure``.  Subclasses implement ``stop()``, ``kill()``,
    ``pause()`` and ``resume()``."""

    def stop(self, grace):
        """Stop the job (on the node too); ``on_end`` follows, at the latest
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

    def stop(self, grace):
        pass

    def kill(self):
        pass

    def pause(self):
        pass

    def resume(self):
        pass
