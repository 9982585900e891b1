"""Argument templates over the real sshd, against GNU parallel: the same
template and inputs through ``parallel`` (run here, with sh, the nodes'
login shell) and through clstr on loopback nodes give the same bytes
(sorted where the order is free)."""

import os
import shutil
import subprocess

import pytest

from clstr_run import clstr, node_args, start_clstr, wait_until

# Every line a value: spaces, quotes, $, backquotes, globs, a backslash,
# braces, a leading dash, bytes that are not UTF-8, an empty line, and
# path-like values for {.} {/} {//} {/.}.
VALUES = [b"a b.txt", b"it's.log", b'say "hi".c', b"$HOME/x.y", b"`id`", b"*.gz", b"back\\slash",
          b"{}", b"{%}", b"-n", b"caf\xe9/\xff.\xfe", b"", b"./dir.d/f.tar.gz", b"/", b"a/",
          b".bashrc", b"x/..", b"tab\there", b"!x"]
NEWLINE = b"two\nlines.txt"

@pytest.fixture
def parallel(tmp_path):
    """Runs GNU parallel here (its jobs under sh, as the nodes' login shell
    runs clstr's); returns its CompletedProcess."""
    if shutil.which("parallel") is None:
        pytest.skip("GNU parallel not installed (apt-get install parallel)")
    home = tmp_path / "parallel-home"
    (home / ".parallel").mkdir(parents=True)
    (home / ".parallel" / "will-cite").touch()
    env = dict(os.environ, HOME=str(home), SHELL="/bin/sh", PARALLEL_SHELL="/bin/sh")

    def run(*args, **kwargs):
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        result = subprocess.run(["parallel", "--will-cite"] + list(args), env=env,
                                capture_output=True, timeout=120, cwd=str(tmp_path), **kwargs)
        assert result.returncode == 0, result.stderr
        return result
    return run

def _both(cluster, parallel, nodes, template, *inputs):
    """(parallel's stdout, clstr's stdout) for ``template`` and ``inputs``
    (words after the template: :::, ::::, -a ...)."""
    words = list(inputs)
    # parallel wants its options before the command, clstr's -a may be anywhere.
    options = []
    while words and words[0] == "-a":
        options += words[:2]
        words = words[2:]
    theirs = parallel(*options, template, *words).stdout
    ours = clstr(cluster, *node_args(nodes), "--group", "-j", template, *inputs)
    assert ours.returncode == 0, ours.stderr
    return theirs, ours.stdout

def _records(output):
    """Sorted records, each ended by NUL and newline (a value may hold a
    newline; clstr ends a job's last line if the job did not)."""
    assert output.endswith(b"\0\n"), output
    return sorted(output.split(b"\0\n")[:-1])

@pytest.mark.parametrize("login", ["node", "bashnode"])
@pytest.mark.parametrize("given", [":::", "::::"])
def test_every_path_string_of_hostile_values_matches_gnu_parallel(cluster, parallel, tmp_path,
                                                                  login, given):
    if given == ":::":
        values = VALUES
    else:
        values = [str(tmp_path / "inputs")]
        (tmp_path / "inputs").write_bytes(b"\n".join(VALUES) + b"\n")
    template = "printf '%s|%s|%s|%s|%s\\0\\n' {} {.} {/} {//} {/.}"
    theirs, ours = _both(cluster, parallel, cluster.nodes(2, prefix=login), template, given,
                         *values)
    assert _records(ours) == _records(theirs)
    assert len(_records(ours)) == len(VALUES)


@pytest.mark.parametrize("login", ["node", "bashnode"])
def test_a_value_with_a_newline_is_one_value(cluster, login):
    # GNU parallel would split it in two (it reads ::: values as lines);
    # clstr keeps a file name whole, whatever it holds.
    result = clstr(cluster, "-n", login + "001", "-j", "printf '%s|%s|%s|%s|%s\\0\\n' "
                   "{} {.} {/} {//} {/.}", ":::", NEWLINE)
    assert result.returncode == 0, result.stderr
    assert _records(result.stdout) == [
        b"two\nlines.txt|two\nlines|two\nlines.txt|.|two\nlines"]


def test_products_of_values_and_files_match_gnu_parallel_with_their_job_numbers(
        cluster, parallel, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"f1\n\nf 3\n")
    second.write_bytes(b"s'1\ns2\n")
    template = "printf '%s\\0\\n' {#}:{1}:{2}:{3}:{4}"
    theirs, ours = _both(cluster, parallel, cluster.nodes(3), template, "-a", str(first),
                         ":::", "a", "b c", "::::", str(second), ":::", "x", "$y")
    assert _records(ours) == _records(theirs)
    assert len(_records(ours)) == 3 * 2 * 2 * 2

def test_a_template_without_replacement_strings_gets_every_value_appended(cluster, parallel):
    theirs, ours = _both(cluster, parallel, cluster.nodes(2), "printf '[%s]\\0\\n'",
                         ":::", "a b", "c", ":::", "it's", "")
    assert _records(ours) == _records(theirs)

def test_dry_run_shows_the_commands_gnu_parallel_would_run(cluster, parallel, tmp_path):
    inputs = tmp_path / "inputs"
    # One line each, as both show them.
    inputs.write_bytes(b"\n".join(VALUES) + b"\n")
    template = "gzip -9 {} > out/{/.}.gz; echo {#} {2}"
    theirs = parallel("--dry-run", "-k", template, "::::", str(inputs), ":::", "x y").stdout
    result = clstr(cluster, "-n", "node001", "--dry-run", "-j", template, "::::", str(inputs),
                   ":::", "x y")
    assert result.returncode == 0, result.stderr
    shown = [line.split(b"  # job ", 1)[1].split(b": ", 1) for line in result.stdout.splitlines()
             if b"  # job " in line]
    assert [int(number) for number, _ in shown] == list(range(1, len(shown) + 1))
    assert b"".join(command + b"\n" for _, command in shown) == theirs

def test_the_joblog_command_column_is_gnu_parallels_and_resume_runs_nothing_again(
        cluster, parallel, tmp_path):
    theirs_log, ours_log = tmp_path / "theirs.log", tmp_path / "ours.log"
    values = ["a b", "it's", "$HOME", "plain", ""]
    parallel("--joblog", str(theirs_log), "echo {}", ":::", *values)
    result = clstr(cluster, *node_args(cluster.nodes(2)), "--joblog", str(ours_log),
                   "-j", "echo {}", ":::", *values)
    assert result.returncode == 0, result.stderr

    def commands(path):
        rows = [line.split(b"\t") for line in path.read_bytes().splitlines()[1:]]
        return sorted((int(row[0]), row[8]) for row in rows)
    assert commands(ours_log) == commands(theirs_log)
    # parallel's own joblog tells clstr what is done.
    again = clstr(cluster, "-n", "node001", "--joblog", str(theirs_log), "--resume",
                  "-j", "echo {}", ":::", *values)
    assert again.returncode == 0 and again.stdout == b"", again.stderr

def test_slot_and_host_are_the_attempts_own_and_the_joblog_keeps_them_as_written(
        cluster, tmp_path):
    joblog = tmp_path / "joblog"
    nodes = ["node001", "node002", "node002"]
    result = clstr(cluster, *node_args(nodes), "--tag", "--joblog", str(joblog),
                   "-j", "echo {host} {%} {} $CLSTR_SLOT", ":::", *[str(n) for n in range(12)])
    assert result.returncode == 0, result.stderr
    # Each host's slots from 1, as $CLSTR_SLOT counts them.
    slots = {"node001": {b"1"}, "node002": {b"1", b"2"}}
    lines = result.stdout.splitlines()
    assert len(lines) == 12
    for line in lines:
        tag, host, slot, _, environment_slot = line.split(b" ")
        assert tag == host + b":" and slot in slots[host.decode()], line
        assert slot == environment_slot, line
    rows = [line.split(b"\t") for line in joblog.read_bytes().splitlines()[1:]]
    assert sorted(row[8] for row in rows) == sorted(b"echo {host} {%%} %d $CLSTR_SLOT" % n
                                                    for n in range(12))
    again = clstr(cluster, *node_args(nodes), "--joblog", str(joblog), "--resume",
                  "-j", "echo {host} {%} {} $CLSTR_SLOT", ":::", *[str(n) for n in range(12)])
    assert again.returncode == 0 and again.stdout == b"", again.stderr

def _read_until(process, wanted):
    """Wait (bounded) until ``process`` has printed ``wanted``."""
    os.set_blocking(process.stdout.fileno(), False)
    printed = []

    def arrived():
        printed.append(process.stdout.read() or b"")
        return wanted in b"".join(printed)
    wait_until(arrived, what="%r from clstr" % wanted)


def test_values_on_stdin_start_jobs_before_the_input_ends(cluster):
    # Two slots, both free from the start (no masters to wait for): a run
    # that read stdin with a blocking read would stop there, with the second
    # slot free, before the first job's output.
    process = start_clstr(cluster, "--no-multiplex", "-n", "node001", "node002", "-a", "-",
                          "-j", "echo got {}", ":::", "x", stdin=subprocess.PIPE)
    try:
        process.stdin.write(b"first\n")
        process.stdin.flush()
        # The input is still open: the job ran all the same.
        _read_until(process, b"got first x\n")
        process.stdin.write(b"second\n")
        process.stdin.close()
        assert process.wait(timeout=60) == 0
        _read_until(process, b"got second x\n")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_fifo_as_first_input_streams_too(cluster, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    process = start_clstr(cluster, "-n", "node001", "-j", "echo {2}{1}", "::::", str(fifo),
                          ":::", "<")
    try:
        with open(str(fifo), "wb", buffering=0) as writer:
            writer.write(b"one\n")
            assert process.stdout.readline() == b"<one\n"
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

def test_an_input_line_with_a_nul_byte_in_a_stream_is_not_run(cluster):
    result = clstr(cluster, "-n", "node001", "-a", "-", "-j", "echo {}",
                   input=b"ok\nnot\0ok\nfine\n", stdin=None)
    assert result.returncode == 1
    assert sorted(result.stdout.splitlines()) == [b"fine", b"ok"]
    assert b"<stdin>:2: job contains a NUL byte; not run" in result.stderr

def test_without_inputs_braces_in_jobs_stay_literal(cluster, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.write_text("echo {} {#} {%}\n")
    result = clstr(cluster, "-n", "node001", "-j", "echo {.} {host}", "-J", str(jobs))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"{.} {host}", b"{} {#} {%}"]
