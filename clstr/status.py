"""What a person watching sees: the live status line and the active-nodes file."""

import os
import time

from .errors import LocalIOError
from .output.sinks import same_file

# At most this many redraws of the status line per second.
REDRAW_INTERVAL = 0.1


# An ETA is shown once this many jobs have completed.
ETA_AFTER = 5


def status_text(completed, total, busy, live_slots, input_done=True):
    """The clstr 0.1.0 status line."""
    width_jobs = len(str(total))
    width_nodes = len(str(live_slots))
    return "%*d of %*d%s jobs complete, %*d of %*d nodes running jobs." % (
        width_jobs, completed, width_jobs, total, "" if input_done else "+",
        width_nodes, busy, width_nodes, live_slots)


def _duration(seconds):
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
    if seconds >= 60:
        return "%dm%02ds" % (seconds // 60, seconds % 60)
    return "%ds" % seconds


def progress_fields(completed, total, busy, live_slots, input_done, elapsed, retired):
    """The 0.1.0 line followed by what a person watching wants: the rate, an
    ETA once enough jobs have finished, and how many nodes were retired; a
    list of fields, most important first."""
    fields = [status_text(completed, total, busy, live_slots, input_done)]
    if elapsed > 0 and completed:
        rate = completed / elapsed
        fields.append("%.1f jobs/min" % (rate * 60))
        if input_done and completed >= ETA_AFTER and total > completed:
            fields.append("ETA %s" % _duration((total - completed) / rate))
    if retired:
        fields.append("%d node%s retired" % (retired, "s" * (retired != 1)))
    return fields


def summary_fields(completed, total, elapsed, retired):
    """The final line: what was done, in how long; no ETA."""
    fields = ["%d of %d jobs complete in %s." % (completed, total, _duration(elapsed))]
    if elapsed > 0 and completed:
        fields.append("%.1f jobs/min" % (completed / elapsed * 60))
    if retired:
        fields.append("%d node%s retired" % (retired, "s" * (retired != 1)))
    return fields


def fit_fields(fields, width, separator="  "):
    """As many whole fields as fit in ``width`` columns, in order; only a
    first field wider than the whole line is cut."""
    text = fields[0][:width] if fields else ""
    for field in fields[1:]:
        if len(text) + len(separator) + len(field) > width:
            break
        text += separator + field
    return text


def status_terminal(stderr_fd=2):
    """The fd to draw the status line on: stderr when it is a terminal, else
    the controlling terminal (as clstr 0.1.0 drew there with stderr
    redirected), else None: no terminal, no status line."""
    if os.isatty(stderr_fd):
        return stderr_fd
    try:
        return os.open("/dev/tty", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None


class StatusLine:
    """A line redrawn in place on a terminal, at most 10 times a second.
    ``render()`` returns the current fields and ``render_final()`` the
    summary's.  Output sinks on the same terminal call ``clear()`` before
    writing so lines never land after the status."""

    def __init__(self, loop, fd, render, render_final=None):
        self._loop = loop
        self._fd = fd
        self._render = render
        self._render_final = render_final or render
        self._timer = None
        self._shown = False
        self._last_draw = 0.0

    @property
    def fd(self):
        return self._fd

    def clear(self, _sink=None):
        if self._shown:
            self._write("\r\x1b[2K")
            self._shown = False
        self.changed()

    def changed(self):
        """Schedule a redraw (coalesced)."""
        if self._timer is None:
            delay = max(0.0, self._last_draw + REDRAW_INTERVAL - time.monotonic())
            self._timer = self._loop.call_later(delay, self._draw)

    def _draw(self, render=None):
        self._timer = None
        self._last_draw = time.monotonic()
        fields = (render or self._render)()
        try:
            columns = os.get_terminal_size(self._fd).columns or 80
        except OSError:
            columns = 80
        self._write("\r\x1b[2K" + fit_fields(fields, max(10, columns - 1)))
        self._shown = True

    def finish(self):
        """Draw the summary and end the line."""
        if self._timer is not None:
            self._timer.cancel()
        self._draw(self._render_final)
        self._write("\n")
        self._shown = False

    def _write(self, text):
        try:
            os.write(self._fd, text.encode("utf-8", "replace"))
        except OSError:
            pass


def active_nodes_text(entries):
    """``host: <'Job' 'command'>`` lines, as clstr 0.1.0 wrote them."""
    return "".join("%s: <'Job' %r>\n" % (host, command) for host, command in entries)


class ActiveNodesFile:
    """Keeps ``target`` (a ``userfiles.snapshot_file``: it knows how to write
    the file where the user expects it) listing which host runs which job.
    Changes are coalesced into at most one rewrite per interval.  A failed
    write raises ``LocalIOError``."""

    def __init__(self, loop, target, entries, interval=0.1):
        self._loop = loop
        self.target = target
        self._entries = entries
        self._interval = interval
        self._timer = None

    def changed(self):
        if self._timer is None:
            self._timer = self._loop.call_later(self._interval, self.write)

    def write(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        text = active_nodes_text(self._entries())
        try:
            self.target.write(text.encode("utf-8", "backslashreplace"))
        except LocalIOError:
            raise
        except OSError as error:
            raise LocalIOError(self.target.shown, error)


def open_status_line(loop, sinks, fields, summary):
    """The live status line on the terminal, if there is one (None if not),
    cleared before any of ``sinks`` writes to that same terminal."""
    terminal = status_terminal()
    if terminal is None:
        return None
    line = StatusLine(loop, terminal, fields, summary)
    for sink in set(sinks):
        if os.isatty(sink.fd) and same_file(sink.fd, terminal):
            sink.before_write = line.clear
    return line


class RunWatch:
    """The run as ``--status`` and ``--active-nodes`` show it (each may be
    off): ``changed()`` after anything that may change them, ``finish()``
    as the run ends.  It reads the run's ``scheduler``, ``feed``, ``pool``
    and ``attempts`` (the running entries)."""

    def __init__(self, loop, plan, sinks, scheduler, feed, pool, attempts):
        self._scheduler = scheduler
        self._feed = feed
        self._pool = pool
        self._started = time.monotonic()
        self.status = None
        if plan.status:
            self.status = open_status_line(loop, sinks, self._status_fields,
                                           self._summary_fields)
        self.active_nodes = None
        if plan.active_nodes:
            # Its own timer's failures reach the run through the loop.
            self.active_nodes = ActiveNodesFile(loop, plan.active_nodes, attempts.entries)

    def changed(self):
        if self.status:
            self.status.changed()
        if self.active_nodes:
            self.active_nodes.changed()

    def finish(self):
        """The status line's last word (its own terminal fd closed)."""
        if self.status:
            self.status.finish()
            if self.status.fd != 2:
                os.close(self.status.fd)

    def _status_fields(self):
        expected, known = self._feed.expected_total
        return progress_fields(self._scheduler.completed, expected - self._feed.skipped,
                               self._pool.busy, self._pool.live_slots, known,
                               time.monotonic() - self._started,
                               len(self._pool.retired_hosts()))

    def _summary_fields(self):
        return summary_fields(self._scheduler.completed, self._feed.total - self._feed.skipped,
                              time.monotonic() - self._started, len(self._pool.retired_hosts()))
