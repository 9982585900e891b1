"""clstr through a real Slurm: ``--exec srun ...`` and ``--slurm``.

Needs root and Debian's slurmctld, slurmd, slurm-client and munge; runs only
under ``make test-slurm`` (tests/slurm/run.sh installs them and sets
CLSTR_SLURM_TEST=1).  Every test here is skipped otherwise, with SKIP_REASON.
The cluster (tests/slurm_cluster.py) is four nodes, n1-n4, on this machine,
with SLOTS task slots each; the last tests break one node mid-run.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from slurm_cluster import NODE, NODES, LoopbackSlurm

from clstr.failures import Kind
from clstr.transport.endreport import ReportReader
from clstr.transport.exec import (
    classify_exec,
    exec_argv,
    parse_exec_template,
    wrapper_words,
)
from clstr.transport.slurm import SRUN_TEMPLATE
from clstr_run import REPO, joblog_rows, wait_until

SKIP_REASON = "real Slurm test: runs only under `make test-slurm` (CLSTR_SLURM_TEST=1)"
pytestmark = pytest.mark.skipif(os.environ.get("CLSTR_SLURM_TEST") != "1",
                                reason=SKIP_REASON)

SLOTS = 2  # per node
JOBS = 200
# An allocation of every slot on every node, as `salloc -N 4 -n 8`.
EVERY_SLOT = ["-N%d" % len(NODES), "-n%d" % (SLOTS * len(NODES))]


@pytest.fixture(scope="module")
def slurm():
    with LoopbackSlurm(cpus=SLOTS) as cluster:
        yield cluster


def srun_attempt(cluster, host, command, allocation=("-N1", "-n1", "-w", NODE)):
    """One attempt as the --exec transport makes it, with clstr's own wrapper,
    inside an salloc; its stdin held open as clstr holds it (EOF stops the
    job).  Returns (srun's exit code, the wrapper's reports, the job's stderr
    as clstr passes it on)."""
    argv = exec_argv(parse_exec_template(SRUN_TEMPLATE), host, wrapper_words(command.encode()))
    stdin_read, stdin_write = os.pipe()
    try:
        result = cluster.run(["salloc", "--quiet"] + list(allocation) + argv, stdin=stdin_read)
    finally:
        os.close(stdin_read)
        os.close(stdin_write)
    reports = ReportReader(before_start="drop", after_end="drop")
    stderr = reports.feed(result.stderr) + reports.close()
    return result.returncode, reports, stderr, result.stderr


def test_srun_job_exit_is_reported_by_the_job_and_srun_adds_nothing(slurm):
    code, reports, stderr, _ = srun_attempt(slurm, NODE, "echo oops >&2; exit 3")
    # The wrapper exits 0 once it has reported: srun says nothing of its own
    # ("task 0: Exited with exit code 3") and the status is the report's.
    assert (code, reports.started, reports.status) == (0, True, 3)
    assert stderr == b"oops\n"


def test_srun_to_a_node_outside_the_allocation_blames_the_node(slurm):
    code, reports, _, said = srun_attempt(slurm, "nosuchnode", "true")
    failure = classify_exec(code, said)
    assert (reports.started, failure.kind) == (False, Kind.TRANSPORT)
    assert failure.detail.startswith("srun: error:")


def test_srun_past_the_step_limit_stops_the_run():
    with LoopbackSlurm(nodes=[NODE], cpus=1, extra_config=["MaxStepCount=1"]) as limited:
        # salloc's own step count starts at 0: the one step allowed is ours,
        # and a second srun in the same allocation is refused.
        argv = exec_argv(parse_exec_template(SRUN_TEMPLATE), NODE, wrapper_words(b"true"))
        script = '"$@"; "$@"'
        result = limited.run(["salloc", "--quiet", "-N1", "-n1", "-w", NODE, "sh", "-c", script,
                              "two"]
                             + argv)
    failure = classify_exec(result.returncode, result.stderr)
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
    result = run_clstr(slurm, ["--exec", SRUN_TEMPLATE, "-n"] + list(NODES) * SLOTS
                       + ["-J", numbered_jobs(tmp_path, JOBS)], allocation=EVERY_SLOT)
    assert_every_job_ran_once(result, JOBS)


def test_exec_srun_outside_an_allocation_runs_every_job_exactly_once(slurm, tmp_path):
    # Each srun makes an allocation of its own: slower (about a second each
    # while the previous job completes), hence fewer jobs.
    result = run_clstr(slurm, ["--exec", "srun --nodes=1 --ntasks=1 --quiet --nodelist={host}",
                               "-n"] + list(NODES) + ["-J", numbered_jobs(tmp_path, 20)])
    assert_every_job_ran_once(result, 20)


def test_slurm_inside_salloc_runs_every_job_exactly_once(slurm, tmp_path):
    result = run_clstr(slurm, ["--slurm", "-J", numbered_jobs(tmp_path, JOBS)],
                       allocation=EVERY_SLOT)
    assert_every_job_ran_once(result, JOBS)


# --- --workers: a worker per slot, one step each ------------------------------

def marker_jobs(tmp_path, count):
    """Jobs that each append their step (job.step) to a file named after
    their number."""
    markers = tmp_path / "markers"
    markers.mkdir()
    path = tmp_path / "jobs"
    path.write_text("".join("echo $SLURM_JOB_ID.$SLURM_STEP_ID >> %s/%d\n" % (markers, n)
                            for n in range(count)))
    return str(path), markers


def test_workers_run_every_job_exactly_once_in_one_step_per_slot(slurm, tmp_path):
    jobs, markers = marker_jobs(tmp_path, JOBS)
    result = run_clstr(slurm, ["--slurm", "--workers", "-J", jobs], allocation=EVERY_SLOT)
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    steps = {}
    for n in range(JOBS):
        lines = (markers / str(n)).read_text().split()
        assert len(lines) == 1, (n, lines)
        steps[lines[0]] = steps.get(lines[0], 0) + 1
    # 200 jobs, 8 slots: at most a step per slot, not one per job.
    assert len(steps) <= SLOTS * len(NODES), steps


def test_workers_keep_a_jobs_cd_and_export_from_the_next(slurm):
    result = run_clstr(slurm, ["--slurm", "--workers", "-j", "cd /; export LEAK=1; ulimit -n 64",
                               "-j", "echo ${LEAK-unset} $(pwd) $(ulimit -n)"],
                       allocation=["-N1", "-n1", "-w", NODE])
    assert result.returncode == 0, result.stderr
    leak, cwd, files = result.stdout.decode().split()
    assert (leak, cwd) == ("unset", REPO) and files != "64"


def test_workers_timeout_stops_one_job_and_a_new_worker_runs_the_next(slurm, tmp_path):
    joblog = str(tmp_path / "joblog")
    result = run_clstr(slurm, ["--slurm", "--workers", "--timeout", "3", "--joblog", joblog,
                               "-j", "echo $SLURM_STEP_ID", "-j", "sleep 300",
                               "-j", "echo $SLURM_STEP_ID"],
                       allocation=["-N1", "-n1", "-w", NODE])
    assert result.returncode == 1, result.stderr
    rows = {int(row[0]): row for row in joblog_rows(joblog)}
    assert [(rows[n][6], rows[n][7]) for n in (1, 2, 3)] == [
        (b"0", b"0"), (b"143", b"15"), (b"0", b"0")], result.stderr
    # A stop ends the worker (EOF on its frames, through srun): the next
    # job is on a new worker, a step of its own.
    before, after = result.stdout.decode().split()
    assert before != after


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
                               "-j", job], allocation=["-N1", "-n1", "-w", NODE])
    assert result.returncode != 0
    deadline = time.monotonic() + 30
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(token) == []


def test_step_limit_stops_the_run_with_one_line(tmp_path):
    # MaxStepCount: the allocation takes 5 steps and refuses the rest, on
    # every node alike; the run stops instead of retiring the nodes.
    with LoopbackSlurm(nodes=[NODE], cpus=4, extra_config=["MaxStepCount=5"]) as limited:
        result = run_clstr(limited, ["--slurm", "-J", numbered_jobs(tmp_path, 50)],
                           allocation=["-N1", "-n4"])
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode != 0
    assert "Step limit reached" in stderr
    assert "retired" not in stderr


# --- one node breaks mid-run -------------------------------------------------
#
# 100 jobs over every slot of the four nodes.  Each job leaves a start marker
# and, once it has run, a done marker in a shared directory (both named after
# the run's token and the job's number, and holding the node's name), so the
# test sees which jobs really ran, where, and how often.  What clstr claims is
# read from its joblog (Exitval 0: completed) and its -vv report.  The broken
# node is always VICTIM; the others must not be retired.

FAULT_JOBS = 100
VICTIM = NODES[1]
# Bounds: a run takes about 20 s (60 s when it waits for Slurm to declare the
# crashed node down, SlurmdTimeout=30 plus its ping interval).
RUN_TIMEOUT = 240


@pytest.fixture
def fault_run(slurm, tmp_path):
    """Starts FaultRuns (``fault_run(seconds, salloc_options)``); after the
    test, kills any still running, cancels their allocations and mends the
    cluster (every slurmd running, every node idle) for the next test."""
    runs = []

    def start(seconds, allocation_options=(), options=()):
        runs.append(FaultRun(slurm, tmp_path, seconds, allocation_options, options))
        return runs[-1]
    try:
        yield start
    finally:
        for run in runs:
            run.kill()
        slurm.run(["scancel", "--user", "root"], timeout=30)
        slurm.restore()


class FaultRun:
    """clstr --slurm with FAULT_JOBS marker-leaving jobs, in the background."""

    def __init__(self, cluster, directory, seconds, allocation_options=(), options=()):
        self.seconds = seconds
        self.directory = str(directory)
        self.token = "run%d-%s" % (os.getpid(), os.urandom(4).hex())
        self.joblog = os.path.join(self.directory, "joblog")
        jobs = os.path.join(self.directory, "jobs")
        with open(jobs, "w") as out:
            for n in range(1, FAULT_JOBS + 1):
                out.write("echo $SLURMD_NODENAME >> %s; sleep %g; echo $SLURMD_NODENAME >> %s\n"
                          % (self._marker(n, "start"), seconds, self._marker(n, "done")))
        argv = (["salloc", "--quiet"] + EVERY_SLOT + list(allocation_options)
                + clstr_argv("--slurm", "-vv", "--joblog", self.joblog, "-J", jobs, *options))
        # A session of its own: kill() reaches salloc, clstr and their sruns.
        self.process = subprocess.Popen(argv, cwd=REPO, env=cluster.env(),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)
        self.stderr = ""

    def _marker(self, seq, what):
        return os.path.join(self.directory, "%s.%d.%s" % (self.token, seq, what))

    def markers(self, what):
        """{job number: [node it ran on, once per run]} for ``what`` markers."""
        found = {}
        for name in os.listdir(self.directory):
            parts = name.split(".")
            if len(parts) == 3 and parts[0] == self.token and parts[2] == what:
                with open(os.path.join(self.directory, name)) as marker:
                    found[int(parts[1])] = marker.read().split()
        return found

    def running_on(self, node):
        """Jobs started on ``node`` less than half their time ago (so still
        running for a while)."""
        done = self.markers("done")
        recent = time.time() - self.seconds / 2
        return [seq for seq, nodes in self.markers("start").items()
                if node in nodes and seq not in done
                and os.stat(self._marker(seq, "start")).st_mtime > recent]

    def wait_mid_run(self, node):
        """Wait until the run is well under way and ``node`` has just
        started a job."""
        wait_until(lambda: self.process.poll() is not None
                   or (len(self.markers("done")) >= 10 and self.running_on(node)),
                   timeout=120, interval=0.02, what="10 jobs done and one started on %s" % node)
        assert self.process.poll() is None, self.finish()

    def finish(self):
        """Wait for clstr to end; its exit status (stderr kept in self)."""
        try:
            _, stderr = self.process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            _, stderr = self.process.communicate()
        self.stderr = stderr.decode("utf-8", "replace")
        return self.process.returncode

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def completed(self):
        """{job number: how many times the joblog records it as completed
        (Exitval 0 and no signal: a job clstr stopped as the run stopped is
        logged with Signal 15, whatever it reported)}."""
        counts = {}
        for row in joblog_rows(self.joblog):
            if row[6] == b"0" and row[7] == b"0":
                seq = int(row[0])
                counts[seq] = counts.get(seq, 0) + 1
        return counts

    def retired(self):
        return set(re.findall(r"^clstr: node (\S+) retired: ", self.stderr, re.M))

    def reported_not_completed(self):
        """The job numbers the failure report lists as not completed (-vv
        lists them all)."""
        return {int(seq) for seq in re.findall(r"^clstr:   job (\d+) ", self.stderr, re.M)}

    def fatal_lines(self):
        """clstr's lines (not the report's indented ones) saying the run stops
        for a failure no node can cure."""
        return [line for line in self.stderr.splitlines()
                if line.startswith("clstr: ") and not line.startswith("clstr:   ")
                and ("fatal" in line or "no node can run jobs" in line)]

    def assert_every_job_completed_once(self):
        """No job lost, none recorded as completed twice: the joblog says
        each job completed exactly once, and each such job really ran to its
        end (its done marker).  A job may have run twice (an end nobody
        heard of, then its rerun), but only once as clstr's record."""
        completed = self.completed()
        assert completed == {seq: 1 for seq in range(1, FAULT_JOBS + 1)}, self.stderr
        lost = sorted(set(completed) - set(self.markers("done")))
        assert lost == [], "recorded as completed, never ran to its end: %s\n%s" % (
            lost, self.stderr)

    def assert_no_job_ran_twice(self, crashed=None):
        """Each job ran to its end once (one done marker), whatever clstr
        recorded; or twice if one end was on the ``crashed`` node: a job that
        ended there as the node crashed, before its end report left it, is
        lost to clstr and rightly runs again."""
        twice = {seq: nodes for seq, nodes in self.markers("done").items()
                 if len(nodes) != 1 and not (len(nodes) == 2 and crashed in nodes)}
        assert twice == {}, "jobs that ran to their end more than once: %s\n%s" % (
            twice, self.stderr)


@pytest.mark.parametrize("options", [(), ("--workers",)], ids=["per-job", "workers"])
def test_a_killed_slurmd_retires_its_node_only(slurm, fault_run, options):
    # The node's slurmd dies; its running steps go on and end as usual, new
    # steps there cannot launch.  --no-kill: the allocation outlives the node
    # (test_a_crash_that_revokes_the_allocation_stops_the_run is the other way).
    run = fault_run(1, ["--no-kill"], options)
    run.wait_mid_run(VICTIM)
    slurm.kill_slurmd(VICTIM)
    assert run.finish() == 0, run.stderr
    run.assert_every_job_completed_once()
    # Running steps carry on: no job is lost, none runs twice.
    run.assert_no_job_ran_twice()
    retired = run.retired()
    assert retired <= {VICTIM}, run.stderr
    if options:
        # The node's workers are steps that were already running: they
        # carry on, and need no new step there.
        return
    # A step that has not started on n2 by the start deadline is throttled
    # under --slurm (a pending step is no dead node): n2 backs off, and is
    # retired only if srun itself gives up first, or it stays throttled.
    assert retired == {VICTIM} or "on %s: throttled" % VICTIM in run.stderr, run.stderr


def test_a_stopped_slurmd_sets_back_its_node_only(slurm, fault_run):
    # SIGSTOP: the slurmd still holds its port; srun's launch there waits for
    # an answer (MessageTimeout) that never comes.
    run = fault_run(1, ["--no-kill"])
    run.wait_mid_run(VICTIM)
    slurm.freeze_slurmd(VICTIM)
    assert run.finish() == 0, run.stderr
    run.assert_every_job_completed_once()
    retired = run.retired()
    assert retired <= {VICTIM}, run.stderr
    # A step that has not started on n2 by the start deadline is throttled
    # under --slurm (a pending step is no dead node): n2 backs off, and is
    # retired only if srun itself gives up first, or it stays throttled.
    assert retired == {VICTIM} or "on %s: throttled" % VICTIM in run.stderr, run.stderr


@pytest.mark.parametrize("options", [(), ("--workers",)], ids=["per-job", "workers"])
def test_a_crashed_node_under_no_kill_loses_no_job(slurm, fault_run, options):
    # The node dies with its jobs.  Their sruns end when Slurm declares the
    # node down ("Node failure on n2", exit 0): those jobs must run again
    # elsewhere, and the allocation (--no-kill) goes on without the node.
    # 3 s jobs: the crash must find n2's jobs still running on a loaded box.
    run = fault_run(3, ["--no-kill"], options)
    run.wait_mid_run(VICTIM)
    lost = run.running_on(VICTIM)
    slurm.crash(VICTIM)
    assert run.finish() == 0, run.stderr
    killed = [seq for seq in lost if VICTIM not in run.markers("done").get(seq, [])]
    assert killed, "no job was killed on %s by the crash" % VICTIM
    assert slurm.node_state(VICTIM).startswith("down"), "Slurm never saw the crash"
    run.assert_every_job_completed_once()
    run.assert_no_job_ran_twice(crashed=VICTIM)
    assert run.retired() == {VICTIM}, run.stderr


def test_a_crash_that_revokes_the_allocation_stops_the_run(slurm, fault_run):
    # Without --no-kill Slurm revokes the whole allocation once the node is
    # declared down: no node can run a job any more.  Longer jobs, so the
    # healthy nodes are still busy then.
    run = fault_run(5)
    run.wait_mid_run(VICTIM)
    slurm.crash(VICTIM)
    status = run.finish()
    assert slurm.node_state(VICTIM).startswith("down"), "Slurm never saw the crash"
    assert status == 1, run.stderr
    assert len(run.fatal_lines()) == 1, run.stderr
    assert run.retired() <= {VICTIM}, run.stderr
    completed = run.completed()
    assert set(completed.values()) <= {1}, run.stderr
    assert set(completed) <= set(run.markers("done")), run.stderr
    not_completed = set(range(1, FAULT_JOBS + 1)) - set(completed)
    assert not_completed, "the run ended before the allocation was revoked"
    assert run.reported_not_completed() == not_completed, run.stderr
    assert ("%d of %d jobs were not completed" % (len(not_completed), FAULT_JOBS)
            in run.stderr), run.stderr
