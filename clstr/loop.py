"""The event loop: file descriptors, child processes, timers and signals.

One ``selectors.DefaultSelector`` (epoll on Linux, so no 1024-fd ceiling) drives
everything; there is no thread per child.  The loop knows nothing of jobs, nodes
or ssh: callers register callbacks and the loop calls them.

Child exits arrive as SIGCHLD, which wakes the selector through a self-pipe
installed with ``signal.set_wakeup_fd``; the loop then reaps only the pids it
spawned, so it never steals the exit status of somebody else's child.

A callback that raises an exception the owner declared with
``handle_errors`` does not unwind the loop: the exception goes to the owner's
handler and the loop carries on, so the other children are still reaped and
the other signals still dispatched.
"""

import errno
import heapq
import itertools
import os
import selectors
import signal
import time

# Signals the child gets back at their default disposition: Python ignores
# SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec.
_RESET_IN_CHILD = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT,
                   signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)


class Timer:
    """A callback due at a monotonic time; ``cancel()`` keeps it from running."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when, callback):
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class _Registration:
    """What the selector holds for one fd.  A fresh object per registration, so
    an event that names a closed-and-reused fd number is recognised as stale."""

    __slots__ = ("on_read", "on_write")

    def __init__(self):
        self.on_read = None
        self.on_write = None


def exit_code(wait_status):
    """Exit code from a wait status: the code, or -N when killed by signal N."""
    if os.WIFSIGNALED(wait_status):
        return -os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


# The longest single wait in the selector; a later timer is waited for in
# steps of this.
MAX_WAIT = 86400.0


class EventLoop:
    """Runs callbacks for readable/writable fds, exited children, timers and
    signals until ``stop()`` is called.  All callbacks run on the loop's thread,
    one at a time; a callback may register or unregister anything."""

    def __init__(self):
        self._selector = selectors.DefaultSelector()
        self._timers = []
        self._timer_seq = itertools.count()
        self._children = {}
        self._signal_callbacks = {}
        self._saved_handlers = {}
        self._pending_signals = []
        self._stopping = False
        self._handled_errors = ()
        self._on_error = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.add_reader(self._wake_r, self._drain_wakeup)
        self.add_signal_handler(signal.SIGCHLD, self._reap_children)

    def handle_errors(self, types, handler):
        """Pass exceptions of ``types`` (a tuple of classes) raised by any
        callback to ``handler(error)`` instead of letting them end ``run()``.
        For failures that must stop the caller's work in order (clstr's own
        I/O errors), not halfway through a callback's caller."""
        self._handled_errors = tuple(types)
        self._on_error = handler

    def _call(self, callback, *args):
        try:
            callback(*args)
        except self._handled_errors as error:
            self._on_error(error)

    # -- file descriptors -------------------------------------------------

    def add_reader(self, fd, callback):
        """Call ``callback()`` whenever ``fd`` is readable (or at EOF/error)."""
        self._set_handler(fd, "on_read", callback)

    def remove_reader(self, fd):
        self._set_handler(fd, "on_read", None)

    def add_writer(self, fd, callback):
        """Call ``callback()`` whenever ``fd`` is writable (or broken)."""
        self._set_handler(fd, "on_write", callback)

    def remove_writer(self, fd):
        self._set_handler(fd, "on_write", None)

    def _set_handler(self, fd, which, callback):
        try:
            key = self._selector.get_key(fd)
        except KeyError:
            key = None
        if key is None:
            if callback is None:
                return
            registration = _Registration()
            setattr(registration, which, callback)
            self._selector.register(fd, self._mask(registration), registration)
            return
        registration = _Registration()
        registration.on_read = key.data.on_read
        registration.on_write = key.data.on_write
        setattr(registration, which, callback)
        mask = self._mask(registration)
        if mask:
            self._selector.modify(fd, mask, registration)
        else:
            self._selector.unregister(fd)

    @staticmethod
    def _mask(registration):
        return ((selectors.EVENT_READ if registration.on_read else 0)
                | (selectors.EVENT_WRITE if registration.on_write else 0))

    # -- timers -------------------------------------------------------------

    def call_later(self, delay, callback):
        """Run ``callback()`` after ``delay`` seconds; returns a cancellable Timer."""
        timer = Timer(time.monotonic() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._timer_seq), timer))
        return timer

    # -- children -----------------------------------------------------------

    def spawn(self, argv, stdin, stdout, stderr, on_exit):
        """Start ``argv`` (bytes or str items; searched on PATH) with the given
        fds as its stdin/stdout/stderr, in a new session (no controlling
        terminal: ssh can never prompt there, and a terminal Ctrl-C reaches
        only us, so we decide how children stop).  ``on_exit(code)`` runs in
        the loop once it has exited.  Returns the pid; raises OSError (e.g.
        FileNotFoundError) if it cannot be started."""
        actions = [(os.POSIX_SPAWN_DUP2, stdin, 0),
                   (os.POSIX_SPAWN_DUP2, stdout, 1),
                   (os.POSIX_SPAWN_DUP2, stderr, 2)]
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions,
                              setsid=True, setsigdef=_RESET_IN_CHILD)
        self._children[pid] = on_exit
        return pid

    def _reap_children(self):
        for pid in list(self._children):
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped, status = pid, 255 << 8
            if reaped:
                self._call(self._children.pop(pid), exit_code(status))


    # -- signals ------------------------------------------------------------

    def add_signal_handler(self, signum, callback):
        """Call ``callback()`` in the loop after ``signum`` arrives."""
        if signum not in self._saved_handlers:
            self._saved_handlers[signum] = signal.signal(signum, self._note_signal)
        self._signal_callbacks[signum] = callback

    def _note_signal(self, signum, _frame):
        # Runs between bytecodes; the wakeup fd has already woken the selector.
        self._pending_signals.append(signum)

    def _drain_wakeup(self):
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _dispatch_signals(self):
        while self._pending_signals:
            signums = set(self._pending_signals)
            del self._pending_signals[:]
            # SIGCHLD first: a child's exit is news that may matter to the rest.
            for signum in sorted(signums, key=lambda s: s != signal.SIGCHLD):
                callback = self._signal_callbacks.get(signum)
                if callback:
                    self._call(callback)

    # -- running ------------------------------------------------------------

    def stop(self):
        """Make ``run()`` return after the current callback."""
        self._stopping = True

    def run(self):
        """Dispatch events until ``stop()``."""
        self.run_while(lambda: True)

    def run_while(self, condition):
        """Dispatch events while ``condition()`` holds, until ``stop()``."""
        self._stopping = False
        while condition() and not self._stopping:
            self._run_once()

    def _run_once(self):
        timeout = self._next_timeout()
        try:
            events = self._selector.select(timeout)
        except InterruptedError:
            events = []
        self._dispatch_signals()
        for key, mask in events:
            if self._stopping:
                return
            try:
                current = self._selector.get_key(key.fd).data
            except KeyError:
                continue
            # Stale if the fd was closed and its number reused this iteration.
            if current is not key.data:
                continue
            try:
                if mask & selectors.EVENT_READ and current.on_read:
                    current.on_read()
                if mask & selectors.EVENT_WRITE and current.on_write and not self._stopping:
                    # on_read may have replaced the registration.
                    try:
                        latest = self._selector.get_key(key.fd).data
                    except KeyError:
                        continue
                    if latest.on_write:
                        latest.on_write()
            except self._handled_errors as error:
                self._on_error(error)
        self._dispatch_signals()
        self._run_due_timers()

    def _next_timeout(self):
        if self._pending_signals:
            return 0
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        # Round up a millisecond so we never wake just before a timer is due
        # and spin.  A timer days away (--alive-interval 1000000) waits in
        # steps: poll() takes at most about 24 days in milliseconds.
        wait = max(0.0, self._timers[0][0] - time.monotonic()) + 0.001
        return min(wait, MAX_WAIT)

    def _run_due_timers(self):
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now and not self._stopping:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                self._call(timer.callback)

    def close(self):
        """Restore signal handlers and release the loop's own fds."""
        signal.set_wakeup_fd(self._old_wakeup_fd)
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, handler)
        self._saved_handlers.clear()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError as error:
                if error.errno != errno.EBADF:
                    raise
