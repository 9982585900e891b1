"""How a run starts fewer jobs when this machine runs short of open files or
processes (the rules are limits.py's; this applies them with the loop's
timers).

Out of fds or processes, a start waits for a running job to give some back:
its slot rests (other slots, a shared connection needs no process, go
first), and resting slots come back one at a time as jobs end.  With
nothing running, starts are tried again with back-off, and the run gives up
after limits.GIVE_UP_AFTER seconds.  Before the first start, the run's
width is fitted to the open-files limit.
"""

import collections
import os
import time

from .limits import GIVE_UP_AFTER, Shortage, limit_words, open_files_limit

# Files held only for a moment, one at a time: a starting job's two pipe write
# ends, a master's log, the active-nodes file's temporary, with room to spare.
FDS_SPARE = 8


def open_fd_count():
    """How many fds this process has open now (a generous guess without
    /proc)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory)) - 1  # listdir's own fd
        except OSError:
            continue
    return 32


def slots_that_fit(limit, in_use, fds_per_job):
    """How many jobs can run at once with ``limit`` open files when
    ``in_use`` are open already (at least one: a run that cannot start even
    one job says so when it tries)."""
    return max(1, (limit - in_use - FDS_SPARE) // fds_per_job)


class StartLimits:
    """The run's starts under this machine's limits.  ``say(text)`` prints
    one of clstr's lines, ``give_up()`` stops the run, ``retry()`` starts
    what can start; ``slots_wanted``: how many jobs the user asked to run at
    once."""

    def __init__(self, loop, pool, transport, slots_wanted, say, give_up, retry):
        self._loop = loop
        self._pool = pool
        self._transport = transport
        self._slots_wanted = slots_wanted
        self._say = say
        self._give_up = give_up
        self._retry = retry
        # Out of fds or processes: start no job until one ends.
        self.starved = False
        self._said = False
        self._shortage = Shortage(time.monotonic)
        self._resting = collections.deque()  # slots held since their start failed so
        self._retry_timer = None  # with nothing running: when to try again

    def fit(self, plan, scheduler):
        """Run no more jobs at once than the open-files limit can hold
        (running more would only fail to start them)."""
        limit = open_files_limit()
        if limit is None:
            return
        per_job = self._transport.fds_per_attempt
        if plan.output_dir:
            per_job += 2  # the job's two partial output files
        if plan.group or plan.gather or plan.keep_order:
            # Outputs past SPILL_AFTER (--gather: HOLD_IN_MEMORY) wait in files.
            per_job += 2
        fit = slots_that_fit(limit, open_fd_count(), per_job)
        if fit < self._slots_wanted:
            scheduler.max_running = fit
            self.say_slot_limit(fit, None)

    def say_slot_limit(self, fit, error):
        """Say once that fewer jobs run at once than asked, and why (``error``:
        what a start ran into; None: the open-files limit read at start)."""
        if self._said or not fit:
            return  # none at all: said when the run gives up
        self._said = True
        self._say("only %d of %d slots can run at once: %s"
                  % (fit, self._slots_wanted, limit_words(error)))

    def started(self):
        """A job or a master started: the shortage, if any, is over."""
        self._shortage.eased()

    def slot_rests(self, slot, running, error):
        """``slot``'s start failed for want of fds or processes, with
        ``running`` jobs running: it rests until something ends."""
        slot.uses -= 1
        self._pool.hold(slot)
        self._resting.append(slot)
        self.starved = True
        self.say_slot_limit(running, error)
        self.short_of(error, running)

    def short_of(self, error, running):
        """A start failed for want of fds or processes.  A running job will
        give some back when it ends; with nothing running, try again after a
        while, and give up when nothing could start for GIVE_UP_AFTER
        seconds."""
        retry = self._shortage.failed(bool(running))
        if retry is Shortage.GIVE_UP:
            self._say("nothing could start for %gs: %s" % (GIVE_UP_AFTER, limit_words(error)))
            self._give_up()
        elif retry is not None and self._retry_timer is None:
            self._retry_timer = self._loop.call_later(retry, self._retry_due)

    def _retry_due(self):
        self._retry_timer = None
        self.eased()
        self._retry()

    def job_ended(self):
        """A job ended: its fds are free again."""
        self.starved = False

    @property
    def waiting(self):
        """Whether a slot or a master waits for resources."""
        return bool(self._resting) or self._transport.waiting_for_resources

    def eased(self):
        """Something ended (or a retry is due): what waited for resources
        may try again; of the resting slots, one at a time."""
        self.starved = False
        self._transport.resources_freed()
        while self._resting:
            slot = self._resting.popleft()
            if slot in slot.host.held:
                self._pool.admit(slot.host.name, lambda held, slot=slot: held is slot)
                return
