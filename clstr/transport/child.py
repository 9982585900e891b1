"""One child process with its stdout and stderr read through non-blocking pipes.

A child is finished when its process has exited, not when its pipes reach EOF:
an ssh started with ``ControlMaster auto`` + ``ControlPersist`` forks a
background master that inherits the client's stderr and keeps it open for
minutes.  So on exit we read what is already in the pipes (everything the
process wrote is there by then) and close them, without waiting for EOF.
"""

import os

READ_SIZE = 65536


class OutputPipes:
    """The read ends of an attempt's stdout and stderr pipes, read without
    blocking in ``loop``.  ``write_ends`` are for the process (or master)
    that writes them; the owner closes them once handed over.
    ``on_output(stream, data)`` gets each chunk (stream 1 or 2) and
    ``on_eof()`` runs each time a pipe reaches its end.  ``pause()`` and
    ``resume()`` stop and restart reading, so a slow consumer makes the writer
    block on a full pipe instead of making us buffer without bound."""

    def __init__(self, loop, on_output, on_eof=None):
        self._loop = loop
        self._on_output = on_output
        self._on_eof = on_eof or (lambda: None)
        self._fds = {}
        self.paused = False
        self.write_ends = []
        try:
            for stream in (1, 2):
                read_end, write_end = os.pipe()
                self._fds[stream] = read_end
                self.write_ends.append(write_end)
                os.set_blocking(read_end, False)
        except BaseException:
            self.close()
            self.close_write_ends()
            raise

    @property
    def open(self):
        """True while a pipe has not reached its end (or been closed)."""
        return bool(self._fds)

    def watch(self):
        """Start reading (after the write ends were handed over)."""
        if not self.paused:
            for stream in self._fds:
                self._watch(stream)

    def _watch(self, stream):
        self._loop.add_reader(self._fds[stream], lambda: self.read(stream))

    def read(self, stream, drain=False):
        """Read from one pipe: once, or (``drain``) until it is empty.
        Closes the pipe at its end."""
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
                self._on_eof()
                return
            self._on_output(stream, data)
            if not drain:
                return
            fd = self._fds.get(stream)

    def drain(self):
        """Read what the pipes hold now and close them, without waiting for
        their end (a writer's child may hold them open)."""
        for stream in list(self._fds):
            self.read(stream, drain=True)
            self._close(stream)

    def _close(self, stream):
        fd = self._fds.pop(stream, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def close(self):
        for stream in list(self._fds):
            self._close(stream)

    def close_write_ends(self):
        while self.write_ends:
            os.close(self.write_ends.pop())

    def pause(self):
        if not self.paused:
            self.paused = True
            for fd in self._fds.values():
                self._loop.remove_reader(fd)

    def resume(self):
        if self.paused:
            self.paused = False
            self.watch()


class ChildProcess:
    """Runs ``argv`` under ``loop``; ``on_output(stream, data)`` gets raw byte
    chunks (stream is 1 or 2) as they arrive, ``on_exit(code)`` runs once the
    process has exited and its pipes are drained (code is -N for signal N).
    ``pause()``/``resume()`` stop and restart reading (see OutputPipes)."""

    def __init__(self, loop, argv, stdin_fd, on_output, on_exit):
        self._on_exit = on_exit
        self.exit_code = None
        self._pipes = OutputPipes(loop, on_output)
        try:
            stdout, stderr = self._pipes.write_ends
            self.pid = loop.spawn(argv, stdin_fd, stdout, stderr, self._exited)
        except BaseException:
            self._pipes.close()
            raise
        finally:
            self._pipes.close_write_ends()
        self._pipes.watch()

    @property
    def running(self):
        return self.exit_code is None

    def pause(self):
        self._pipes.pause()

    def resume(self):
        self._pipes.resume()

    def kill(self, signum, group=False):
        """Signal the process, or (``group``) its whole process group: it
        was started in a session of its own (loop.spawn).  Ignored once it
        has exited and been reaped (its pid may be another's by then)."""
        if self.exit_code is None:
            try:
                if group:
                    os.killpg(self.pid, signum)
                else:
                    os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def _exited(self, code):
        self.exit_code = code
        # What the process wrote is all in the pipes now; anything later comes
        # from a process that inherited them (a ControlPersist master).
        self._pipes.drain()
        self._on_exit(code)
