"""clstr through a real Slurm: ``--exec srun ...`` and ``--slurm``.

Needs root and Debian's slurmctld, slurmd, slurm-client and munge; runs only
under ``make test-slurm`` (tests/slurm/run.sh installs them and sets
CLSTR_SLURM_TEST=1).  Every test here is skipped otherwise, with SKIP_REASON.
Each "node" is the one loopback Slurm node, listed several times.
"""

import os
import subprocess
import sys
import time

import pytest
from slurm_cluster import NODE, LoopbackSlurm

from clstr.exectransport import (
    SRUN_TEMPLATE,
    StartMarkerFilter,
    classify_exec,
    exec_argv,
    is_srun_task_report,
    marker_prefix,
    parse_exec_template,
)
from clstr.failures import Kind
from clstr_run import REPO

SKIP_REASON = "real Slurm test: runs only under `make test-slurm` (CLSTR_SLURM_TEST=1)"
pytestmark = pytest.mark.skipif(os.environ.get("CLSTR_SLURM_TEST") != "1",
                                reason=SKIP_REASON)

SLOTS = 4
JOBS = 200


@pytest.fixture(scope="module")
def slurm():
    with LoopbackSlurm(cpus=SLOTS) as cluster:
        yield cluster


# The smallest wrapper that says the job started: the real one (clstr.ssh)
# also stops the job when clstr goes away.
MARKING_WRAPPER = marker_prefix() + 'exec sh -c "$1"'


def srun_attempt(cluster, host, command, allocation=("-N1", "-n1")):
    """One attempt as the exec transport makes it, inside an salloc; returns
    (exit code, started, stderr after the marker filter)."""
    argv = exec_argv(parse_exec_template(SRUN_TEMPLATE), host,
                     ["sh", "-c", MARKING_WRAPPER, "clstr-job", command])
    result = cluster.run(["salloc", "--quiet"] + list(allocation) + argv)
    marker_filter = StartMarkerFilter()
    stderr = marker_filter.feed(result.stderr) + marker_filter.close()
    return result.returncode, marker_filter.started, stderr


def test_srun_job_exit_is_the_jobs_and_the_marker_is_gone(slurm):
    code, started, stderr = srun_attempt(slurm, NODE, "echo oops >&2; exit 3")
    assert (code, started) == (3, True)
    assert classify_exec(code, started, stderr).kind is Kind.JOB_EXIT
    lines = stderr.splitlines(True)
    assert b"oops\n" in lines
    # What else srun says is its report of the task's end, nothing more.
    assert all(is_srun_task_report(line) for line in lines if line != b"oops\n")


def test_srun_to_a_node_outside_the_allocation_blames_the_node(slurm):
    code, started, stderr = srun_attempt(slurm, "nosuchnode", "true")
    failure = classify_exec(code, started, stderr)
    assert (started, failure.kind) == (False, Kind.TRANSPORT)
    assert failure.detail.startswith("srun: error:")


def test_srun_past_the_step_limit_stops_the_run():
    with LoopbackSlurm(cpus=1, extra_config=["MaxStepCount=1"]) as limited:
        # salloc's own step count starts at 0: the one step allowed is ours,
        # and a second srun in the same allocation is refused.
        argv = exec_argv(parse_exec_template(SRUN_TEMPLATE), NODE,
                         ["sh", "-c", MARKING_WRAPPER, "clstr-job", "true"])
        script = '"$@"; "$@"'
        result = limited.run(["salloc", "--quiet", "-N1", "-n1", "sh", "-c", script, "two"]
                             + argv)
    failure = classify_exec(result.returncode, False, result.stderr)
    assert failure.kind is Kind.FATAL, result.stderr
    assert "Step limit reached" in failure.detail


def clstr_argv(*args):
    return [sys.executable, "-m", "clstr"] + list(args)


def run_clstr(cluster, args, allocation=None, timeout=600, env=None):
    """Run clstr against ``cluster``, inside ``salloc ALLOCATION...`` if given."""
    argv = clstr_argv(*args)
    if allocation is not None:
        argv = ["salloc", "--quiet"] + list(allocation) + argv
    return subprocess.run(argv, cwd=REPO, env=env or cluster.env(), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout)


def numbered_jobs(tmp_path, count):
    path = tmp_path / "jobs"
    path.write_text("".join("echo job-%d\n" % n for n in range(count)))
    return str(path)


def assert_every_job_ran_once(result, count):
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    lines = result.stdout.decode().split()
    assert sorted(lines) == sorted("job-%d" % n for n in range(count))


def test_exec_srun_runs_every_job_exactly_once(slurm, tmp_path):
    # Inside an allocation each srun is a step: tens of milliseconds.
    result = run_clstr(slurm, ["--exec", SRUN_TEMPLATE, "-n"] + [NODE] * SLOTS
                       + ["-J", numbered_jobs(tmp_path, JOBS)],
                       allocation=["-N1", "-n%d" % SLOTS])
    assert_every_job_ran_once(result, JOBS)


def test_exec_srun_outside_an_allocation_runs_every_job_exactly_once(slurm, tmp_path):
    # Each srun makes an allocation of its own: slower (about a second each
    # while the previous job completes), hence fewer jobs.
    result = run_clstr(slurm, ["--exec", "srun --nodes=1 --ntasks=1 --quiet --nodelist={host}",
                               "-n"] + [NODE] * SLOTS + ["-J", numbered_jobs(tmp_path, 20)])
    assert_every_job_ran_once(result, 20)


def test_slurm_inside_salloc_runs_every_job_exactly_once(slurm, tmp_path):
    result = run_clstr(slurm, ["--slurm", "-J", numbered_jobs(tmp_path, JOBS)],
                       allocation=["-N1", "-n%d" % SLOTS])
    assert_every_job_ran_once(result, JOBS)


def test_slurm_outside_an_allocation_is_one_line_and_exit_2(slurm):
    result = run_clstr(slurm, ["--slurm", "-j", "true"])
    assert result.returncode == 2
    assert result.stderr.decode().count("\n") == 1
    assert "allocation" in result.stderr.decode()


def _processes_with(token):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as source:
                    if token in source.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_timeout_leaves_no_process_on_the_node(slurm, tmp_path):
    token = ("clstr-slurm-timeout-%d" % os.getpid()).encode()
    # A background child and a foreground one, both holding the token.
    job = "sh -c 'sleep 300; : %s' & sh -c 'sleep 301; : %s'" % (token.decode(), token.decode())
    result = run_clstr(slurm, ["--exec", SRUN_TEMPLATE, "--timeout", "2", "-n", NODE,
                               "-j", job], allocation=["-N1", "-n1"])
    assert result.returncode != 0
    deadline = time.monotonic() + 30
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(token) == []


def test_step_limit_stops_the_run_with_one_line(tmp_path):
    # MaxStepCount: the allocation takes 5 steps and refuses the rest, on
    # every node alike; the run stops instead of retiring the nodes.
    with LoopbackSlurm(cpus=SLOTS, extra_config=["MaxStepCount=5"]) as limited:
        result = run_clstr(limited, ["--slurm", "-J", numbered_jobs(tmp_path, 50)],
                           allocation=["-N1", "-n%d" % SLOTS])
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode != 0
    assert "Step limit reached" in stderr
    assert "retired" not in stderr
