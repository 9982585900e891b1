"""One child process with its stdout and stderr read through non-blocking pipes.

A child is finished when its process has exited, not when its pipes reach EOF:
an ssh started with ``ControlMaster auto`` + ``ControlPersist`` forks a
background master that inherits the client's stderr and keeps it open for
minutes.  So on exit we read what is already in the pipes (everything the
process wrote is there by then) and close them, without waiting for EOF.
"""

import os

READ_SIZE = 65536


class ChildProcess:
    """Runs ``argv`` under ``loop``; ``on_output(stream, data)`` gets raw byte
    chunks (stream is 1 or 2) as they arrive, ``on_exit(code)`` runs once the
    process has exited and its pipes are drained (code is -N for signal N).
    ``pause()``/``resume()`` stop and restart reading, so a slow consumer makes
    the child block on a full pipe instead of making us buffer without bound."""

    def __init__(self, loop, argv, stdin_fd, on_output, on_exit):
        self._loop = loop
        self._on_output = on_output
        self._on_exit = on_exit
        self._paused = False
        self._fds = {}
        self.exit_code = None
        child_ends = []
        try:
            for stream in (1, 2):
                read_end, write_end = os.pipe()
                child_ends.append(write_end)
                os.set_blocking(read_end, False)
                self._fds[stream] = read_end
            self.pid = loop.spawn(argv, stdin_fd, child_ends[0], child_ends[1], self._exited)
        except BaseException:
            for fd in self._fds.values():
                os.close(fd)
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        for stream in self._fds:
            self._watch(stream)

    @property
    def running(self):
        return self.exit_code is None

    def _watch(self, stream):
        self._loop.add_reader(self._fds[stream], lambda: self._read(stream))

    def _read(self, stream, drain=False):
        """Read from one pipe: once, or (``drain``) until it is empty.  Closes
        the pipe at EOF."""
        fd = self._fds.get(stream)
        while fd is not None:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close(stream)
                return
            self._on_output(stream, data)
            if not drain:
                return
            fd = self._fds.get(stream)

    def _close(self, stream):
        fd = self._fds.pop(stream, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def pause(self):
        if not self._paused:
            self._paused = True
            for fd in self._fds.values():
                self._loop.remove_reader(fd)

    def resume(self):
        if self._paused:
            self._paused = False
            for stream in self._fds:
                self._watch(stream)

    def kill(self, signum):
        """Signal the process (ignored once it has exited and been reaped)."""
        if self.exit_code is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def _exited(self, code):
        self.exit_code = code
        # What the process wrote is all in the pipes now; anything later comes
        # from a process that inherited them (a ControlPersist master).
        for stream in list(self._fds):
            self._read(stream, drain=True)
            self._close(stream)
        self._on_exit(code)
