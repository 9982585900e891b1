"""--dry-run: the exact command lines (masters, ssh, or an --exec template) a
run would start, and nothing else.

The lines come from a rehearsal of a run in which every job succeeds: the
run's own transport (transport/choice.py) and scheduler, with masters that
come up as soon as they are started and jobs that end in the order they
started, so the dry run starts the masters a run would (only for the slots
the jobs can use at once).  A command too big for a command line goes on
the attempt's stdin (transport/wrapper.py): its line says so in a comment, with the
command's first bytes.  A job made from a --job template has its command, as
the node's shell gets it, in a comment too, on the same line (a newline in
it shown as ``\n``), so the line's shell words stay as they are.
"""

import collections
import os
import shlex

from .nodes import NodePool
from .privatedir import PrivateDirectory
from .returnfiles import describe_returns
from .scheduler import Scheduler
from .sendfiles import describe_sends
from .transport.choice import transport_for
from .transport.interface import RunEvents
from .transport.masters import MASTER_IDLE_EXIT
from .transport.prelude import attempt_prelude
from .transport.wrapper import command_on_stdin

# Masters' sockets and ssh's logs live in a directory made when the run
# starts (privatedir.py); a dry run shows where, with this stand-in name.
SOCKETS = "/tmp/clstr-XXXXXXXX"


def quote_argv(argv):
    """One shell-quoted line for ``argv`` (bytes items decoded for display)."""
    return " ".join(shlex.quote(os.fsdecode(word)) for word in argv)


class _Masters:
    """Masters that come up at once: the stand-in for masters.MasterSet.
    Each one started is a line; its ``on_done`` is due next in ``due``."""

    def __init__(self, ssh, due, lines):
        self._ssh = ssh
        self._due = due
        self._lines = lines
        self._paths = {}

    @property
    def live_count(self):
        return len(self._paths)

    def start(self, host, group, on_done):
        path = self._paths[host, group] = "%s/%d" % (SOCKETS, len(self._paths))
        self._lines.append(quote_argv(self._ssh.master_argv(host, path, MASTER_IDLE_EXIT)))
        self._due.append(lambda: on_done(None, None))

    def control_path(self, host, group):
        return self._paths.get((host, group))

    def login_shell(self, host, group):
        # A run asks the host (masters.py); shown here as for any shell.
        return None

    def login_shell_unknown(self, host, group):
        return None


class _Rehearsal(RunEvents):
    """The run's side, as in run.Run when every master comes up: the first
    master of a host sends its --send files (``sends``), shown as lines."""

    def __init__(self, pool, due, sends, workdir, lines):
        self._workdir = workdir
        self._pool = pool
        self._due = due
        self._sends = sends
        self._lines = lines
        self._sent = set()
        self.transport = None

    def master_up(self, host, group, unavailable):
        which = lambda slot: self.transport.master_of(slot) == group  # noqa: E731
        self.send_to(next(slot for slot in self._pool.hosts[host].held if which(slot)))
        self._pool.admit(host, which)

    def send_to(self, slot):
        """The --send copies to ``slot``'s host, once per host."""
        if not self._sends or slot.host.name in self._sent:
            return
        self._sent.add(slot.host.name)
        for argv, sent in describe_sends(self.transport, slot, self._sends, self._workdir):
            self._lines.append("%s  # on stdin: %s (%d bytes)"
                               % (quote_argv(argv), sent.path, sent.size))

    def note(self, text):
        pass


def dry_run_lines(plan, feed):
    """The command lines, in the order a run in which every job succeeds
    would start them."""
    lines = []
    due = collections.deque()  # what happens next: masters up, jobs ending
    pool = NodePool(plan.hosts, max_uses=plan.max_node_uses)
    scheduler = Scheduler(pool, feed, max_running=plan.max_nodes)
    rehearsal = _Rehearsal(pool, due, plan.sends, plan.workdir, lines)
    transport = rehearsal.transport = transport_for(
        plan, None, PrivateDirectory(SOCKETS), pool, rehearsal,
        masters=_Masters(plan.ssh, due, lines),
        # The hosts' own order: one a run may take, and easy to read.
        shuffle=lambda items: None)
    if not transport.has_masters:
        for host in pool.hosts.values():
            rehearsal.send_to(host.slots[0])
    next_assignment = scheduler.next_pinned_assignment if plan.pinned else scheduler.next_assignment
    running = collections.deque()
    while True:
        transport.prepare(scheduler.slots_in_demand)
        yield from lines
        lines.clear()
        assignment = next_assignment()
        while assignment is not None:
            job, slot = assignment
            line = quote_argv(transport.describe(job, slot, attempt_prelude(plan, job, slot)))
            command = job.command_on(slot)
            if command_on_stdin(command):
                line += "  # on stdin: the job's command, %s" % job.brief
            elif feed.templated:
                shown = os.fsdecode(command.replace(b"\n", b"\\n"))
                line += "  # job %d: %s" % (job.seq, shown)
            yield line
            for argv, local in describe_returns(transport, plan.returns, plan.output_dir_path,
                                                plan.workdir, job, slot):
                yield "%s  # stdout to %s" % (quote_argv(argv), local)
            running.append(assignment)
            assignment = next_assignment()
        if due:
            due.popleft()()
        elif running:
            job, slot = running.popleft()
            scheduler.attempt_finished(job, slot, None)
        elif not feed.input_done:
            # A run waits for a stream here: read it all.
            feed.read_everything()
        else:
            return
