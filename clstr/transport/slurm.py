"""``--slurm``: the exec transport (transport/exec.py) through srun, in the
allocation clstr runs in.

The nodes and their task slots come from the allocation's environment
(``slurm_nodes``); each attempt is one srun step (``SRUN_TEMPLATE``).  srun
exits 0 when a node fails under a running step, and 1 for its own failures
as for a job's, so a job that started and ended without its end report
makes clstr ask Slurm's controller whether the allocation still runs: if
not, no node can run jobs any more and the run stops.
"""

import os
import re
import signal
import time

from ..failures import classify_allocation
from ..limits import out_of_resources
from ..nodeset import MAX_NAMES, NodeSpecError, expand
from .child import ChildProcess
from .exec import ExecTransport


class SlurmEnvironmentError(ValueError):
    """``--slurm`` outside a usable Slurm allocation (a usage error)."""


# One single-task step per attempt, on the node chosen by clstr:
# --nodes=1 --ntasks=1   exactly one task on one node, whatever the
#                        allocation's own -N/-n say (srun inherits them);
# --overlap              share the allocation's CPUs with the other steps:
#                        without it a step takes all of a node's CPUs and the
#                        next step on that node waits (Slurm >= 20.11);
# --quiet                no "job step queued", "waiting for resources"
#                        chatter in the job's stderr; errors still come;
# --job-name=clstr       the step's name in squeue -s and sacct (default: "sh");
# no -u                  srun's stdout is a pipe, not a pty, and slurmstepd
#                        forwards whole lines, which is what clstr assembles
#                        anyway; -u would not make output arrive sooner;
# no --kill-on-bad-exit  one task per step: nothing else to kill.
SRUN_TEMPLATE = "srun --nodes=1 --ntasks=1 --overlap --quiet --job-name=clstr --nodelist={host}"

# Slurm writes counts per node as "2(x3),1": 2 tasks on each of 3 nodes, then 1.
_TASK_COUNT = re.compile(r"\s*(\d+)\s*(?:\(\s*x\s*(\d+)\s*\))?\s*\Z")


def parse_tasks_per_node(text):
    """The task count of each node, in order, from Slurm's compressed form
    (``$SLURM_TASKS_PER_NODE``: ``2(x3),1`` is [2, 2, 2, 1])."""
    counts = []
    slots = 0
    for part in text.split(","):
        match = _TASK_COUNT.match(part)
        if not match:
            raise SlurmEnvironmentError("--slurm: cannot read $SLURM_TASKS_PER_NODE %r" % text)
        count, repeat = int(match.group(1)), int(match.group(2) or 1)
        # Checked before the list is made: "99999999(x4)" would fill memory.
        slots += count * repeat
        if slots > MAX_NAMES or len(counts) + repeat > MAX_NAMES:
            raise SlurmEnvironmentError("--slurm: $SLURM_TASKS_PER_NODE %r gives more than %d "
                                        "slots" % (text, MAX_NAMES))
        counts.extend([count] * repeat)
    return counts


def slurm_nodes(environ):
    """The allocation's nodes, each listed once per task slot it was given
    (node order kept, a node's slots together), from ``environ``'s
    $SLURM_JOB_NODELIST and $SLURM_TASKS_PER_NODE.  Raises
    SlurmEnvironmentError outside an allocation or when they disagree."""
    job = environ.get("SLURM_JOB_ID")
    nodelist = environ.get("SLURM_JOB_NODELIST")
    if not job or not nodelist:
        raise SlurmEnvironmentError("--slurm: not inside a Slurm allocation ($SLURM_JOB_ID "
                                    "and $SLURM_JOB_NODELIST unset); run clstr under "
                                    "salloc or sbatch, or give nodes with --exec srun")
    tasks = environ.get("SLURM_TASKS_PER_NODE")
    if not tasks:
        raise SlurmEnvironmentError("--slurm: $SLURM_TASKS_PER_NODE is unset in job %s" % job)
    try:
        names = expand(nodelist)
    except NodeSpecError as error:
        raise SlurmEnvironmentError("--slurm: $SLURM_JOB_NODELIST: %s" % error) from None
    counts = parse_tasks_per_node(tasks)
    if len(counts) != len(names):
        raise SlurmEnvironmentError(
            "--slurm: $SLURM_TASKS_PER_NODE %r gives %d counts for the %d nodes of "
            "$SLURM_JOB_NODELIST %r" % (tasks, len(counts), len(names), nodelist))
    slots = []
    for name, count in zip(names, counts):
        slots.extend([name] * count)
    return slots


# How long Slurm's controller may take to say whether the allocation runs.
SQUEUE_TIMEOUT = 10.0
# squeue could not start for want of fds or processes: try again after this
# (within SQUEUE_TIMEOUT).
SQUEUE_RETRY = 0.5


def ask_slurm_allocation(loop, job_id, done, deadline=None):
    """Ask Slurm whether allocation ``job_id`` still runs, without blocking
    the loop: ``done(failure)`` gets a FATAL Failure if it does not (revoked,
    expired, cancelled: no node can run jobs any more), None if it does or
    if the controller cannot tell (then the attempt's own failure stands).
    ``deadline``: the monotonic time by which squeue must have started."""
    if deadline is None:
        deadline = time.monotonic() + SQUEUE_TIMEOUT
    state = []
    argv = ["squeue", "-h", "-j", job_id, "-o", "%T"]
    answered = []

    def exited(code):
        if answered:
            return
        answered.append(True)
        timer.cancel()
        done(classify_allocation(job_id, code, b"".join(state)))

    def gave_up():
        if not answered:
            answered.append(True)
            child.kill(signal.SIGKILL)
            done(None)

    try:
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            child = ChildProcess(loop, argv, devnull, lambda stream, data: state.append(data),
                                 exited)
        finally:
            os.close(devnull)
    except OSError as error:
        if out_of_resources(error) and time.monotonic() + SQUEUE_RETRY < deadline:
            # This machine's limit, not the allocation's: ask again shortly.
            loop.call_later(SQUEUE_RETRY,
                            lambda: ask_slurm_allocation(loop, job_id, done, deadline))
        else:
            done(None)
        return
    timer = loop.call_later(SQUEUE_TIMEOUT, gave_up)


class SlurmTransport(ExecTransport):
    """Attempts through srun (``words``: SRUN_TEMPLATE's) in allocation
    ``job_id`` ($SLURM_JOB_ID)."""

    def __init__(self, words, loop, job_id):
        super().__init__(words, loop)
        self._job_id = job_id

    def classify_end(self, reports, code, stderr_tail, done):
        """As ExecTransport's, but a job that started and ended without its
        end report first has Slurm asked whether the allocation still runs
        (a FATAL failure if it does not)."""
        def judged(failure):
            if not reports.started or reports.ended:
                done(failure)
            else:
                ask_slurm_allocation(self._loop, self._job_id,
                                     lambda fatal: done(fatal or failure))
        super().classify_end(reports, code, stderr_tail, judged)
