"""Running attempts through a program other than ssh: ``--exec`` and ``--slurm``.

``--exec TEMPLATE`` runs each attempt as TEMPLATE (split like a shell command
line, never given to a local shell) with ``{host}`` replaced by the node's
name, followed by the remote wrapper as separate words::

    srun --nodes=1 --ntasks=1 --overlap --nodelist={host}
    docker exec -i {host}
    kubectl exec -i {host} --

Unlike ssh (255 for its own errors), srun, docker and kubectl exit 1 when they
fail, just as a job that exits 1, and srun exits 0 when a node fails under a
running step.  So their exit status is never taken for the job's: the wrapper
reports the job's start and end on stderr (endreport.py), and
``classify_exec`` names only what failed before the start: a node the
transport could not reach, or a failure no node can cure (the run must stop).

``--slurm`` takes the nodes and their task slots from the allocation clstr
runs in (``slurm_nodes``) and runs each attempt through ``SRUN_TEMPLATE``.

Pure functions; no I/O.
"""

import re
import shlex

from clstr.failures import Failure, Kind
from clstr.nodeset import MAX_NAMES, NodeSpecError, expand
from clstr.ssh import wrapper_argv

HOST_FIELD = "{host}"


class ExecTemplateError(ValueError):
    """An ``--exec`` template that cannot be used (a usage error)."""


class SlurmEnvironmentError(ValueError):
    """``--slurm`` outside a usable Slurm allocation (a usage error)."""


# --- the template ---------------------------------------------------------

def parse_exec_template(text):
    """The words of ``--exec`` ``text``, split as a POSIX shell would split a
    simple command (quotes and backslashes; no variables, globs or
    operators: nothing is given to a shell).  Raises ExecTemplateError
    unless some word holds ``{host}`` and the program itself does not."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise ExecTemplateError("--exec %r: %s" % (text, error)) from None
    if not words:
        raise ExecTemplateError("--exec: empty template; give a command line "
                                "with {host}, e.g. --exec 'docker exec -i {host}'")
    if not any(HOST_FIELD in word for word in words):
        raise ExecTemplateError("--exec %r has no {host}: say where the node's name goes, "
                                "e.g. --exec 'docker exec -i {host}'" % text)
    # The program run locally must not depend on a node's name (which may
    # come from a file or $SLURM_JOB_NODELIST).
    if HOST_FIELD in words[0]:
        raise ExecTemplateError("--exec %r: {host} cannot be in the program's name" % text)
    return words


def exec_argv(template_words, host, wrapper_words):
    """The argv of one attempt: ``template_words`` with ``{host}`` replaced
    by ``host`` inside each word, then ``wrapper_words`` (str or bytes) as
    they are.  Replacing within words never adds a word, so a host is an
    option only if a word is exactly ``{host}`` and the host starts with
    "-", which validated hosts never do; checked again here all the same."""
    if not host or host.startswith("-"):
        raise ValueError("not a usable host name for --exec: %r" % host)
    return [word.replace(HOST_FIELD, host) for word in template_words] + list(wrapper_words)


# --- Slurm ----------------------------------------------------------------

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


def wrapper_words(command):
    """The remote wrapper as argv words after an exec template, running
    ``command`` (bytes) as one argument (no quoting: no shell reads it as
    text).  The wrapper reports the job's start and end (endreport.py)."""
    return wrapper_argv(command)


# --- what a failed attempt means ------------------------------------------

# Said by the transport before the job started, these fail on every node
# alike, so retiring nodes one by one would only hide them: the run stops.
# All are the transport's own final errors (srun of Slurm 22.05, docker and
# kubectl's option parser), not messages after which they retry:
_NO_NODE_CAN_CURE = re.compile(
    # MaxStepCount reached: the allocation takes no more steps.
    rb"Step limit reached for this job"
    # The allocation ($SLURM_JOB_ID, --jobid) is unknown or already ended.
    rb"|Invalid job id specified|Job/step already completing or completed"
    # The template asks for a partition, account or QOS that is not there.
    rb"|Invalid partition name specified|Invalid account or account/partition combination"
    rb"|Invalid qos specification"
    # The template's options are wrong: srun (getopt), docker and kubectl.
    rb"|unrecognized option|invalid option|unknown (?:shorthand )?flag")
# Deliberately not here: "Job step creation temporarily disabled, retrying"
# (srun waits and retries by itself), "Unable to contact slurm controller"
# (may pass once slurmctld is back), "Invalid node name specified" and
# "No such container" (one node's fault: that node is retired).


def _last_lines(stderr_tail, count):
    lines = [line.strip() for line in stderr_tail.splitlines() if line.strip()]
    return lines[-count:]


def classify_exec(code, stderr_tail):
    """The transport's own failure, for an exec transport that exited with
    ``code`` (-N: killed by signal N) before its job started (failures.judge
    reads it only then), or None if it exited 0.  ``stderr_tail``: the last
    few KiB of its stderr (bytes).

    ``Kind.FATAL`` if no node can cure it, else ``Kind.TRANSPORT`` (the node
    is at fault, like a refused ssh), with the transport's last stderr line
    as the reason."""
    if code == 0:
        return None
    if code < 0:
        return Failure(Kind.INTERRUPTED, "transport killed by signal %d" % -code)
    lines = _last_lines(stderr_tail, 4)
    for line in reversed(lines):
        if _NO_NODE_CAN_CURE.search(line):
            return Failure(Kind.FATAL, line.decode("utf-8", "replace"))
    if lines:
        return Failure(Kind.TRANSPORT, lines[-1].decode("utf-8", "replace"))
    return Failure(Kind.TRANSPORT, "exited %d before the job started" % code)
