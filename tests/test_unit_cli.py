"""The command line, with a local stand-in for ssh: usage errors are one line
and exit 2 with nothing started; options behave as documented."""

import dataclasses
import os
import subprocess
import sys

import pytest

from clstr_run import REPO

FAKESSH = os.path.join(REPO, "tests", "fakessh")


def run(*args, stdin=subprocess.DEVNULL, **kwargs):
    return subprocess.run([sys.executable, "-m", "clstr", "--ssh-command", FAKESSH] + list(args),
                          cwd=REPO, capture_output=True, timeout=60, stdin=stdin, **kwargs)


@pytest.mark.parametrize("args, mentions", [
    (["-n", "a", "-J", "/no/such/jobs", "-j", "JOB"], "/no/such/jobs"),
    (["-N", "/no/such/nodes", "-j", "JOB"], "/no/such/nodes"),
    (["-j", "JOB"], "no nodes"),
    (["-n", "a"], "no jobs"),
    (["-n", "a", "-j", "JOB", "--frobnicate"], "--frobnicate"),
    (["-n", "a", "-j", "JOB", "-E", "y"], "--on-each-node"),
    (["-n", "a", "-j", "JOB", "-m", "lots"], "lots"),
    (["-n", "lab[3-1]", "-j", "JOB"], "lab[3-1]"),
    (["--node=-oProxyCommand=evil", "-j", "JOB"], "-oProxyCommand=evil"),
    (["-n", "a", "-j", "JOB", "--resume"], "--resume"),
    (["-n", "a", "-j", "JOB", "--ssh-command", "no-such-ssh-here"], "no-such-ssh-here"),
    (["-n", "a", "-j", "JOB", "--gather"], "--gather needs --on-each-node"),
    (["-n", "a", "-E", "JOB", "--gather", "--tag"], "--gather cannot be combined with --tag"),
    (["-n", "a", "-E", "JOB", "--gather", "--group"], "--gather cannot be combined with --group"),
    (["-n", "a", "-E", "JOB", "--gather", "--output-dir", "/nonexistent/out"],
     "--gather cannot be combined with --output-dir"),
    (["-n", "a", "-j", "JOB", "--halt", "now,fail=1", "--job-failure", "node"],
     "--halt counts a job's own exit as that job's failure"),
    (["-n", "a", "-j", "JOB", "--retries", "3", "--job-failure", "node"],
     "--retries counts a job's own exit as that job's failure"),
    (["-n", "a", "-j", "JOB", "--halt", "soon,done=1"], "done=N is not supported"),
    (["-n", "a", "-j", "JOB", "--halt", "sometimes"], "argument --halt: 'sometimes'"),
    (["-n", "a", "-E", "JOB", "--gather", "-k"], "--gather cannot be combined with --keep-order"),
    (["-n", "0/a", "-j", "JOB"], "'0/a'"),
    (["-n", "x/lab[1-2]", "-j", "JOB"], "'x/lab[1-2]'"),
    (["--node=-1/a", "-j", "JOB"], "'-1/a'"),
])
def test_usage_errors_are_one_line_exit_2_and_start_nothing(args, mentions, tmp_path):
    marker = tmp_path / "ran"
    result = run(*[("touch %s" % marker if arg == "JOB" else arg) for arg in args])
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clstr: error: "), lines
    assert mentions in lines[0]
    assert result.stdout == b""
    assert not marker.exists()


def run_slurm(env):
    return subprocess.run([sys.executable, "-m", "clstr", "--slurm", "--dry-run", "-j", "x"],
                          cwd=REPO, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=env)


@pytest.mark.parametrize("environ, mentions", [
    ({}, "--slurm: not inside a Slurm allocation"),
    ({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-4]", "SLURM_TASKS_PER_NODE": "100001(x4)"},
     "--slurm: $SLURM_TASKS_PER_NODE '100001(x4)' gives more than 100000 slots"),
])
def test_slurm_environment_errors_say_slurm_once(environ, mentions):
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    result = run_slurm(dict(env, **environ))
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clstr: error: " + mentions), lines
    assert lines[0].count("--slurm") == 1, lines


def test_slurm_two_tasks_on_each_of_twelve_nodes():
    env = dict(os.environ, SLURM_JOB_ID="7", SLURM_JOB_NODELIST="n[01-12]",
               SLURM_TASKS_PER_NODE="2(x12)")
    result = run_slurm(env)
    assert result.returncode == 0, result.stderr
    hosts = [line.split("--nodelist=", 1)[1].split()[0] for line in
             result.stdout.decode().splitlines() if "--nodelist=" in line]
    assert hosts and set(hosts) <= {"n%02d" % n for n in range(1, 13)}, result.stdout


@pytest.mark.parametrize("option", ["--max-nodes", "--max-node-uses", "--max-attempts",
                                    "--max-sessions", "--retries"])
def test_counts_are_capped_with_one_line(option):
    result = run("-n", "a", "-j", "x", option, "99999999999")
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "at most 1000000" in lines[0] and option in lines[0], lines


def test_exec_host_gets_an_address_without_its_brackets():
    result = subprocess.run([sys.executable, "-m", "clstr", "--exec", "env H={host}",
                             "-n", "[::1]", "-n", "me@[fe80::1%eth0]", "--dry-run",
                             "--on-each-node", "x"],
                            cwd=REPO, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    hosts = sorted(line.split()[1] for line in result.stdout.decode().splitlines())
    assert hosts == ["H=::1", "H=me@fe80::1%eth0"], result.stdout


def test_keep_order_with_output_dir_is_a_usage_error_and_makes_no_directory(tmp_path):
    result = run("-n", "a", "-k", "--output-dir", str(tmp_path / "out"), "-j", "echo x")
    assert result.returncode == 2
    assert result.stderr.startswith(b"clstr: error: --keep-order and --output-dir")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line", ["b[9-1]", "0/b"])
def test_node_file_error_names_the_line(tmp_path, line):
    nodes = tmp_path / "nodes"
    nodes.write_text("a\n%s\n" % line)
    result = run("-N", str(nodes), "-j", "x")
    assert result.returncode == 2
    assert ("%s:2:" % nodes) in result.stderr.decode()


def test_help_teaches_with_examples():
    result = run("--help")
    text = result.stdout.decode()
    assert result.returncode == 0
    for word in ("--node", "--job-file", "--on-each-node", "examples:", "exit status"):
        assert word in text


def test_dry_run_prints_ssh_lines_and_starts_nothing(tmp_path):
    marker = tmp_path / "ran"
    result = run("--dry-run", "--no-multiplex", "-n", "h[1-2]", "-j", "touch %s" % marker)
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1 and " -- h" in lines[0] and "BatchMode=yes" in lines[0]
    assert not marker.exists()
    # The printed line is a shell command that really does the job (given a
    # stdin that stays open, as clstr gives every ssh).
    shell = subprocess.Popen(["sh", "-c", lines[0]], stdin=subprocess.PIPE)
    assert shell.wait(timeout=30) == 0
    shell.stdin.close()
    assert marker.exists()


def test_dry_run_says_a_big_command_goes_on_stdin_and_shows_its_start(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.write_bytes(b": " + b"A" * (1 << 20) + b"; echo big\n")
    result = run("--dry-run", "--no-multiplex", "-n", "h1", "-J", str(jobs))
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert len(line) < 4000
    assert line.endswith(b"  # on stdin: the job's command, : " + b"A" * 198
                         + b" [cut: 1048588 bytes in all]")


def test_stdout_option_without_file_discards_output():
    result = run("-n", "a", "-j", "echo hidden", "-o")
    assert result.returncode == 0 and result.stdout == b""


def test_jobs_from_stdin_dash():
    result = run("-n", "a", "-n", "b", "-J", "-", stdin=None,
                 input=b"echo one\n\necho two\r\n")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"one", b"two"]


def test_1000_jobs_over_4_slots_each_print_exactly_once(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.write_text("".join("echo %d\n" % n for n in range(1000)))
    result = run("-n", "a", "b", "c", "d", "-J", str(jobs))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(b"%d" % n for n in range(1000))


def test_verbose_counts_and_very_verbose_lists_jobs_not_completed():
    one = run("-v", "-n", "dead1", "-j", "echo a", "-j", "echo b")
    two = run("-vv", "-n", "dead1", "-j", "echo a", "-j", "echo b")
    assert one.returncode == two.returncode == 1
    assert b"2 of 2 jobs were not completed" in one.stderr
    assert b"job 1 'echo a'" in two.stderr and b"job 2 'echo b'" in two.stderr


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith(b"clstr 0.")


def test_a_plan_is_made_once_and_never_changed(tmp_path):
    from clstr.cli import make_plan, open_outputs
    out = str(tmp_path / "out")
    plan, feed = make_plan(["-n", "a", "b", "-j", "x", "-o", out, "--exec", "true -i {host}"])
    feed.close()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.verbose = 2
    assert (plan.hosts, plan.exec_words, plan.stdout_fd) == (
        ("a", "b"), ("true", "-i", "{host}"), None)
    opened, joblog = open_outputs(plan)
    try:
        assert joblog is None and opened.stderr_fd == 2 and os.path.exists(out)
        assert dataclasses.replace(opened, stdout_fd=None, stderr_fd=None) == plan
    finally:
        os.close(opened.stdout_fd)


def test_dry_run_of_workers_shows_each_slots_worker_through_its_master():
    result = run("--dry-run", "--workers", "-n", "h1", "h2", "-j", "true", "-j", "true")
    assert result.returncode == 0, result.stderr
    masters, workers = [], []
    for line in result.stdout.decode().splitlines():
        (masters if "ControlMaster=yes" in line else workers).append(line)
    assert len(masters) == 2 and len(workers) == 2
    for worker, host in zip(workers, ("h1", "h2")):
        assert "ControlMaster=no" in worker and " -- %s " % host in worker
        assert "clstr-worker" in worker
