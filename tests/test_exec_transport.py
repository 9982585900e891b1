"""--exec: the same job list through a program other than ssh (issue 14),
with local templates standing in for srun, docker exec and kubectl exec.

Every "node" here is this machine: the template runs the remote wrapper
locally, with the node's name in the environment (``env CLSTR_NODE={host}``)
or as an argument to a small stand-in for a container runtime."""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from clstr_run import REPO, RUN_ID, local_processes, local_processes_left, read_lines

# A stand-in for `docker exec -i CONTAINER CMD...`: containers named bad*
# do not exist, containers named full* say what Slurm says at its step limit,
# and the runtime of containers named dies* is killed by a signal a second
# after it started the job.
RUNTIME = r'''#!/bin/sh
container=$1; shift
case $container in
    bad*) echo "Error: No such container: $container" >&2; exit 1 ;;
    full*) echo "srun: error: Unable to create step for job 42: Step limit reached for this job" >&2
           exit 1 ;;
    dies*) exec 3<&0; CLSTR_NODE=$container "$@" <&3 3<&- & sleep 1; kill -TERM $$ ;;
esac
CLSTR_NODE=$container exec "$@"
'''


@pytest.fixture
def runtime(tmp_path):
    path = tmp_path / "runtime"
    path.write_text(RUNTIME)
    path.chmod(0o755)
    return "%s {host}" % path


def clstr(*args, timeout=120, **kwargs):
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([sys.executable, "-m", "clstr", *args], cwd=REPO,
                          capture_output=True, timeout=timeout, **kwargs)


def test_jobs_run_through_the_template_with_the_host_filled_in():
    result = clstr("--exec", "env CLSTR_NODE={host}", "-n", "a1", "-n", "a2", "--tag",
                   *(["-j", 'echo "on $CLSTR_NODE"'] * 4))
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert len(lines) == 4
    assert all(line in (b"a1: on a1", b"a2: on a2") for line in lines), lines
    # The start marker never reaches the job's stderr.
    assert result.stderr == b""


def test_stderr_and_exit_status_are_the_jobs(runtime):
    result = clstr("--exec", runtime, "--job-failure", "job", "-n", "c1",
                   "-j", "echo out; echo err >&2; exit 3")
    assert result.returncode == 1
    assert result.stdout == b"out\n"
    assert result.stderr.startswith(b"err\n"), result.stderr
    assert b"job exit 3" in result.stderr


def test_transport_failure_retires_the_node_with_its_words_and_the_job_runs_elsewhere(runtime):
    result = clstr("--exec", runtime, "-v", "-n", "bad1", "-n", "good1",
                   *(["-j", 'echo "ran on $CLSTR_NODE"'] * 3))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [b"ran on good1"] * 3
    assert b"node bad1 retired: transport: Error: No such container: bad1" in result.stderr


def test_a_job_failing_after_it_started_retires_its_node_as_with_ssh(runtime):
    # The 0.1.0 rule: a non-zero exit cannot be told from the node failing;
    # both nodes get a job at once, so c1 is sure to fail one.
    result = clstr("--exec", runtime, "-v", "-n", "c1", "-n", "c2",
                   *(["-j", '[ "$CLSTR_NODE" = c2 ] && echo done'] * 4))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"done\n" * 4
    assert b"node c1 retired: job exit 1" in result.stderr


def test_a_transport_killed_after_the_job_started_is_interrupted_and_the_job_runs_elsewhere(
        runtime):
    # Not the job's exit status (-15 is none): with --job-failure job a job
    # exit would be given up; an interrupted attempt runs again elsewhere.
    job = 'case $CLSTR_NODE in dies*) sleep 30;; esac; echo "ran on $CLSTR_NODE"'
    result = clstr("--exec", runtime, "-v", "--job-failure", "job", "-n", "dies1", "-n", "c1",
                   *(["-j", job] * 2))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"ran on c1"] * 2, result.stderr
    assert b"node dies1 retired: interrupted" in result.stderr, result.stderr


def test_a_failure_no_node_can_cure_stops_the_run_with_one_line(runtime):
    result = clstr("--exec", runtime, "-n", "full1", "-n", "full2", "-n", "full3",
                   *(["-j", "true"] * 6))
    assert result.returncode == 1
    said = result.stderr.decode().splitlines()
    # One line says why; the report then says what was left undone.
    assert "Step limit reached" in said[0] and "no node can run jobs" in said[0], said
    assert not [line for line in said[1:] if "Step limit" in line and "job" not in line], said
    assert said[-1] == "clstr: 6 of 6 jobs were not completed", said
    assert not [line for line in said if "retired" in line], said


def _shell_leaves_a_trapping_child(marker, flags):
    """A job whose shell starts a background child and ends at once.  The
    child says "started", then runs until TERM, when it leaves a flag named
    after its node in ``flags``; ``marker`` is in its command line."""
    return ("m=%s; (trap 'touch %s/term-$CLSTR_NODE; exit 0' TERM; echo started; "
            "while :; do sleep 0.05; done) &" % (marker, flags))


def _kill_left(marker):
    """Kill what this test's jobs left running (only when the test failed)."""
    for pid in local_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_background_child_keeps_its_job_and_its_late_output_comes():
    # The wrapper waits for the job's process group, not its shell alone.
    result = clstr("--exec", "env CLSTR_NODE={host}", "-n", "w1",
                   "-j", "(sleep 0.5; echo late) & echo early")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"early\nlate\n"


def test_timeout_stops_background_children_the_shell_left_running(tmp_path):
    marker = "clstr-exec-timeout-" + RUN_ID
    try:
        result = clstr("--exec", "env CLSTR_NODE={host}", "-n", "t1", "--timeout", "2",
                       "-j", _shell_leaves_a_trapping_child(marker, tmp_path))
        assert result.returncode == 1, result.stderr
        assert result.stdout == b"started\n"
        assert b"timeout: stopped after 2s" in result.stderr
        assert local_processes_left(marker) == []
    finally:
        _kill_left(marker)


def test_ctrl_c_sends_term_to_every_process_of_every_job(tmp_path):
    # TERM, not only KILL, reaches the job's background children: their
    # traps run (KILL follows only for what ignores TERM).
    marker = "clstr-exec-ctrl-c-" + RUN_ID
    process = subprocess.Popen(
        [sys.executable, "-m", "clstr", "--exec", "env CLSTR_NODE={host}", "-n", "i1", "-n", "i2",
         *(["-j", _shell_leaves_a_trapping_child(marker, tmp_path)] * 2)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert read_lines(process.stdout, 2) == [b"started\n"] * 2
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
        assert local_processes_left(marker) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _kill_left(marker)
    assert sorted(os.listdir(str(tmp_path))) == ["term-i1", "term-i2"]


@pytest.mark.parametrize("mode", [["--group"], ["--tag"], ["--output-dir", "OUT"]])
def test_output_modes_work_through_exec(tmp_path, mode):
    mode = [str(tmp_path / "out") if word == "OUT" else word for word in mode]
    result = clstr("--exec", "env CLSTR_NODE={host}", "-n", "m1", *mode,
                   "-j", "echo one; echo two >&2", "-j", "echo three")
    assert result.returncode == 0, result.stderr
    if "--output-dir" in mode:
        out = tmp_path / "out"
        assert (out / "1.out").read_bytes() == b"one\n"
        assert (out / "1.err").read_bytes() == b"two\n"
        assert (out / "2.out").read_bytes() == b"three\n"
    else:
        prefix = b"m1: " if "--tag" in mode else b""
        assert sorted(result.stdout.splitlines()) == [prefix + b"one", prefix + b"three"]
        assert result.stderr == prefix + b"two\n"


def test_dry_run_shows_the_exec_command_lines():
    result = clstr("--exec", "docker exec -i {host}", "-n", "web1", "--dry-run", "-j", "uname -n")
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode().strip()
    assert line.startswith("docker exec -i web1 sh -c "), line
    # The job's prelude (its environment), then its command.
    assert line.endswith("clstr-job 'export CLSTR_SEQ=1 CLSTR_SLOT=1 CLSTR_HOST='\"'\"'web1'"
                         "\"'\"'; ' 'uname -n'"), line


def test_dry_run_says_a_big_command_goes_on_stdin(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.write_bytes(b": " + b"A" * (1 << 20) + b"; echo big\n")
    result = clstr("--exec", "docker exec -i {host}", "-n", "web1", "--dry-run", "-J", str(jobs))
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith(b"docker exec -i web1 sh -c ") and len(line) < 4000
    assert line.endswith(b"clstr-job 'export CLSTR_SEQ=1 CLSTR_SLOT=1 CLSTR_HOST='\"'\"'web1'"
                         b"\"'\"'; '  # on stdin: the job's command, : " + b"A" * 198
                         + b" [cut: 1048588 bytes in all]")


@pytest.mark.parametrize("option", [["--ssh-command", "ssh"], ["-O", "User=x"],
                                    ["--alive-interval", "3"],
                                    ["--max-sessions", "4"], ["--multiplex"],
                                    ["--no-multiplex"]])
def test_ssh_only_options_are_a_usage_error_with_exec(option):
    result = clstr("--exec", "env CLSTR_NODE={host}", *option, "-n", "x1", "-j", "true")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert b"--exec" in result.stderr


def test_template_without_host_is_a_usage_error():
    result = clstr("--exec", "docker exec -i", "-n", "x1", "-j", "true")
    assert result.returncode == 2
    assert b"{host}" in result.stderr


def test_slurm_outside_an_allocation_is_one_line_and_exit_2():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = clstr("--slurm", "-j", "true", env=env)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert b"allocation" in result.stderr


def test_slurm_takes_nodes_and_task_slots_from_the_allocation(tmp_path):
    # A stand-in srun first in PATH: runs the wrapper here, naming the node.
    srun = tmp_path / "srun"
    srun.write_text('#!/bin/sh\nfor a; do shift; case $a in --nodelist=*) '
                    'node=${a#--nodelist=}; break ;; esac; done\n'
                    'CLSTR_NODE=$node exec "$@"\n')
    srun.chmod(0o755)
    env = dict(os.environ, PATH="%s:%s" % (tmp_path, os.environ["PATH"]), SLURM_JOB_ID="7",
               SLURM_JOB_NODELIST="cn[01-02]", SLURM_TASKS_PER_NODE="2(x2)")
    result = clstr("--slurm", "--tag", *(["-j", 'echo "$CLSTR_NODE"'] * 8), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 8
    assert {line.split(b": ")[0] for line in lines} <= {b"cn01", b"cn02"}


# --- the job reports its own end (issue 18) ----------------------------------

def test_a_transport_that_hangs_before_the_job_is_stopped_and_its_job_runs_elsewhere(
        tmp_path):
    # silent* nodes never start the wrapper: their transport sleeps longer
    # than this test waits.
    mark = "400.%s" % RUN_ID
    template = "sh -c 'case $0 in silent*) sleep %s;; esac; exec \"$@\"' {host}" % mark
    log = tmp_path / "log"
    try:
        result = clstr("--exec", template, "--connect-timeout", "1", "-v", "--joblog",
                       str(log), "-n", "silent1", "-n", "good1", *(["-j", "echo ran"] * 3),
                       timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"ran\n" * 3
        assert b"node silent1 retired: connect timeout: the job had not started after 16s" \
            in result.stderr, result.stderr
        # The transport's whole process group was stopped, its sleep too.
        assert local_processes_left(mark) == []
    finally:
        _kill_left(mark)


def test_a_job_that_kills_its_process_group_keeps_its_node_under_job_failure_job(runtime):
    result = clstr("--exec", runtime, "--job-failure", "job", "-n", "k1", "-v",
                   "-j", "kill -9 0", "-j", "echo after")
    assert result.returncode == 1, result.stderr
    assert result.stdout == b"after\n"
    assert b"job exit 137" in result.stderr and b"retired" not in result.stderr, result.stderr


def test_exit_255_is_the_jobs_own_status(runtime):
    result = clstr("--exec", runtime, "--job-failure", "job", "-n", "e1", "-v",
                   "-j", "exit 255", "-j", "echo after")
    assert result.stdout == b"after\n"
    assert b"job exit 255" in result.stderr and b"retired" not in result.stderr, result.stderr


def test_a_transport_exit_0_without_the_end_report_is_a_lost_connection(tmp_path):
    # Like srun on a node failure: the job started, then the transport exits
    # 0 without passing the job's end on.  lost* nodes do that, once their
    # job has said it runs.
    flags = tmp_path / "flags"
    flags.mkdir()
    template = ("sh -c 'CLSTR_NODE=$0; export CLSTR_NODE; case $0 in lost*) "
                "exec 3<&0; \"$@\" <&3 3<&- & i=0; "
                "while [ ! -e %s/$0 ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; "
                "kill -9 $!; exit 0;; esac; exec \"$@\"' {host}" % flags)
    job = "touch %s/$CLSTR_NODE; sleep 1; echo done" % flags
    log = tmp_path / "log"
    result = clstr("--exec", template, "-v", "--joblog", str(log), "-n", "lost1", "-n", "ok1",
                   "-j", job, "-j", job, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"done\n" * 2
    assert b"node lost1 retired: connection lost" in result.stderr, result.stderr
    rows = [line.split(b"\t") for line in log.read_bytes().splitlines()[1:]]
    assert sorted((row[1], row[6]) for row in rows) == [
        (b"lost1", b"255"), (b"ok1", b"0"), (b"ok1", b"0")]


def test_no_terminated_line_reaches_job_stderr_when_clstr_stops_a_job(runtime):
    result = clstr("--exec", runtime, "--timeout", "1", "-n", "t1", "-j", "sleep 30")
    assert result.returncode == 1
    assert b"Terminated" not in result.stderr, result.stderr


def test_the_same_words_from_three_nodes_before_any_start_stop_the_run(tmp_path):
    template = "sh -c 'echo Cannot connect to the daemon. >&2; exit 1' {host}"
    result = clstr("--exec", template, "-n", "d[1-6]", *(["-j", "true"] * 6))
    assert result.returncode == 1
    assert b"Cannot connect to the daemon.: no node can run jobs, stopping" in result.stderr
    assert b"retired" not in result.stderr, result.stderr


@pytest.mark.parametrize("template", ["ssh {host}", "nice ssh -q {host}",
                                      "env A=1 ssh {host}"])
def test_an_ssh_exec_template_is_a_usage_error_pointing_to_ssh_command(template):
    result = clstr("--exec", template, "-n", "a", "-j", "true")
    assert result.returncode == 2
    assert b"--ssh-command" in result.stderr and len(result.stderr.splitlines()) == 1


def test_workers_on_a_node_without_setsid_or_job_control_run_each_job_in_its_own_process(
        tmp_path):
    # dash has no job control without a tty, and this PATH has no setsid: the
    # worker says so, and the node's jobs go through the per-job wrapper.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "dash", "cat", "rm", "mkdir", "sleep", "env"):
        os.symlink(shutil.which(tool), str(bin_dir / tool))
    runs = tmp_path / "runs"
    result = clstr("--workers", "--exec", "env PATH=%s SHELL=/bin/dash CLSTR_NODE={host}" % bin_dir,
                   "-n", "n1", "-n", "n2",
                   *(["-j", 'echo "$CLSTR_SEQ $PPID" >> %s; echo "ran $CLSTR_SEQ"' % runs] * 6))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"ran %d" % n for n in range(1, 7)]
    seqs, parents = zip(*(line.split() for line in runs.read_text().splitlines()))
    assert sorted(seqs) == [str(n) for n in range(1, 7)]
    # Each job under a wrapper of its own, not 2 workers' 6 jobs.
    assert len(set(parents)) == 6
    assert result.stderr == b""


def test_workers_give_a_command_too_big_for_a_frame_a_session_of_its_own(tmp_path):
    # 200 KiB on one line: more than one argument may hold (128 KiB), which
    # a worker under dash would have to pass to `$SHELL -c`.
    job_file = tmp_path / "jobs"
    job_file.write_text("echo small\nprintf %%s '%s' | wc -c\n" % ("x" * 200 * 1024))
    result = clstr("--workers", "--exec", "env SHELL=/bin/dash CLSTR_NODE={host}", "-n", "n1",
                   "-J", str(job_file), timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == [b"204800", b"small"]
