"""--dry-run: the exact command lines (ssh, or an --exec template) a run would
start, and nothing else.  A command too big for a command line goes on the
attempt's stdin (ssh.py): its line says so in a comment, with the command's
first bytes."""

import os
import shlex

from .exectransport import exec_argv, wrapper_words
from .multiplex import MASTER_IDLE_EXIT
from .nodes import NodePool
from .ssh import command_on_stdin

# Masters' sockets and ssh's logs live in a directory made when the run
# starts (privatedir.py); a dry run shows where, with this stand-in name.
SOCKETS = "/tmp/clstr-XXXXXXXX"


def quote_argv(argv):
    """One shell-quoted line for ``argv`` (bytes items decoded for display)."""
    return " ".join(shlex.quote(os.fsdecode(word)) for word in argv)


def dry_run_lines(plan, feed):
    """The command lines, in the order a run in which every job succeeds
    would start them (masters first when multiplexing)."""
    pool = NodePool(plan.hosts, max_uses=plan.max_node_uses)
    sessions = max(1, plan.sessions_per_master)
    paths = {}
    if plan.multiplex:
        for host in pool.hosts.values():
            for group in range((host.slot_count + sessions - 1) // sessions):
                paths[host.name, group] = "%s/%d" % (SOCKETS, len(paths))
                yield quote_argv(plan.ssh.master_argv(host.name, paths[host.name, group],
                                                      MASTER_IDLE_EXIT))
    feed.read_everything()
    logs = 0
    while True:
        job = feed.take()
        if job is None:
            return
        slot = pool.acquire_on(job.host) if job.host else pool.acquire()
        if plan.exec_words:
            line = quote_argv(exec_argv(plan.exec_words, slot.host.name,
                                        wrapper_words(job.command)))
        else:
            control_path = paths.get((slot.host.name, slot.index // sessions))
            logs += 1
            log_path = "%s/attempt-%d.log" % (SOCKETS, logs)
            line = quote_argv(plan.ssh.argv(slot.host.name, job.command, control_path,
                                            log_path))
        if command_on_stdin(job.command):
            line += "  # on stdin: the job's command, %s" % job.brief
        yield line
        pool.release(slot)
