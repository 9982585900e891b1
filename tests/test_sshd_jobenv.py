"""The job's environment and directory on every transport: CLSTR_SEQ,
CLSTR_SLOT and CLSTR_HOST, --env (compared byte for byte with GNU
parallel's --env) and --workdir, over the real loopback sshd (one ssh per
job, the mux client, --workers with and without masters) and through --exec (a local template, with
and without --workers).  The prelude itself is in test_unit_prelude.py."""

import os
import shutil
import subprocess
import sys

import pytest

from clstr.transport.prelude import WORKDIR_FAILED
from clstr.transport.wrapper import STDIN_ABOVE
from clstr_run import REPO, RUN_ID, clstr, joblog_rows, node_args, require_program

# How each transport is asked for; "exec" ones run here, not through sshd.
TRANSPORTS = {
    "ssh": ["--no-multiplex"],
    "mux": ["--multiplex"],
    "workers": ["--workers", "--no-multiplex"],
    "workers-mux": ["--workers", "--multiplex"],
    "exec": ["--exec", "env {host}=1"],
    "exec-workers": ["--exec", "env {host}=1", "--workers"],
}
# A value holding every byte some shell's quoting treats specially.
HOSTILE = b"sp ace 'q' \"dq\" $HOME `id` \\ \\\\ \\' !x ! \tnew\nline \xff\xfe end\n"


def run_on(transport, cluster, *args, env=None):
    """clstr with ``transport``'s options and ``args``; ``env`` added to
    its environment."""
    env = dict(os.environ, **(env or {}))
    if transport.startswith("exec"):
        return subprocess.run([sys.executable, "-m", "clstr", *TRANSPORTS[transport], *args],
                              cwd=REPO, capture_output=True, timeout=120,
                              stdin=subprocess.DEVNULL, env=env)
    return clstr(cluster, *TRANSPORTS[transport], *args, env=env)


def hosts_for(transport, cluster, count):
    """``count`` host names: sshd's nodes, or names for the exec template."""
    if transport.startswith("exec"):
        return ["H%02d" % n for n in range(1, count + 1)]
    return cluster.nodes(count)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_job_sees_its_number_slot_and_host(transport, cluster, shared_dir, tmp_path):
    one, two = hosts_for(transport, cluster, 2)
    joblog = tmp_path / "joblog"
    # All three run at once (each waits for the others' files), so each
    # holds a slot of its own: one's first and second, two's first.
    job = ('echo "$CLSTR_SEQ $CLSTR_SLOT $CLSTR_HOST" > %s/$CLSTR_SEQ.seen; i=0; '
           'while set -- %s/*.seen; [ $# -lt 3 ] && [ $i -lt 600 ]; do sleep 0.05; '
           'i=$((i+1)); done; cat %s/$CLSTR_SEQ.seen' % ((shared_dir,) * 3))
    result = run_on(transport, cluster, *node_args([one, one, two]), "--joblog", str(joblog),
                    *(["-j", job] * 3))
    assert result.returncode == 0, result.stderr
    seen = sorted(line.split() for line in result.stdout.decode().splitlines())
    assert [seq for seq, _, _ in seen] == ["1", "2", "3"]
    assert sorted((host, slot) for _, slot, host in seen) == [(one, "1"), (one, "2"),
                                                            (two, "1")]
    hosts = {row[0].decode(): row[1].decode() for row in joblog_rows(joblog)}
    assert {seq: host for seq, _, host in seen} == hosts


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_env_values_arrive_as_gnu_parallel_passes_them(transport, cluster, tmp_path):
    parallel = require_program("parallel")
    show = 'printf "%s|" "$V" "$EMPTY"'
    env = {b"V": HOSTILE, b"EMPTY": b"", b"HOME": bytes(tmp_path)}
    # Without -S, GNU parallel runs the job here: what --env gives a job.
    expected = subprocess.run([parallel, "--will-cite", "-N0", "--env", "V", "--env", "EMPTY",
                               show, ":::", "1"], capture_output=True, timeout=60,
                              env={**os.environb, **env})
    assert expected.returncode == 0 and expected.stdout.startswith(b"sp ace"), expected
    result = run_on(transport, cluster, "--env", "V", "--env", "EMPTY",
                    *node_args(hosts_for(transport, cluster, 1)), "-j", show,
                    env={"V": os.fsdecode(HOSTILE), "EMPTY": ""})
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == expected.stdout


def test_env_reaches_a_bash_login_shells_jobs_through_the_mux(cluster):
    # A bash login shell runs the wrapper and the prelude itself.
    result = clstr(cluster, "--multiplex", "--env", "V", "-n", "bashnode001",
                   "-j", 'printf %s "$V"', env=dict(os.environ, V=os.fsdecode(HOSTILE)))
    assert (result.returncode, result.stdout) == (0, HOSTILE), result.stderr


@pytest.mark.parametrize("transport", ["ssh", "mux", "workers", "workers-mux"])
def test_jobs_run_in_the_workdir_made_under_the_nodes_home(transport, cluster):
    home = os.path.expanduser("~" + cluster.user)
    top = "clstr-workdir-%s-%s" % (RUN_ID, transport)
    try:
        result = clstr(cluster, *TRANSPORTS[transport], "--workdir", "~/%s/a b'c" % top,
                       *node_args(cluster.nodes(2)), *(["-j", "pwd"] * 4))
        assert result.returncode == 0, result.stderr
        assert set(result.stdout.decode().splitlines()) == {"%s/%s/a b'c" % (home, top)}
    finally:
        shutil.rmtree(os.path.join(home, top), ignore_errors=True)


@pytest.mark.parametrize("transport", ["exec", "exec-workers"])
def test_exec_jobs_run_in_the_workdir(transport, cluster, tmp_path):
    workdir = tmp_path / "made" / "here"
    result = run_on(transport, cluster, "--workdir", str(workdir), "-n", "H01", "-j", "pwd")
    assert (result.returncode, result.stdout) == (0, bytes(workdir) + b"\n"), result.stderr


def unenterable(transport, shared_dir, tmp_path):
    """A directory that cannot be made: under a read-only parent for the
    login user; under a file for an exec job, which runs as us (root may
    write anywhere)."""
    if transport.startswith("exec"):
        blocked = tmp_path / "file"
        blocked.write_text("")
        return str(blocked / "sub")
    parent = os.path.join(shared_dir, "read-only")
    os.mkdir(parent, 0o555)
    return os.path.join(parent, "sub")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_workdir_that_cannot_be_made_is_the_jobs_failure(transport, cluster, shared_dir,
                                                           tmp_path):
    workdir = unenterable(transport, shared_dir, tmp_path)
    joblog = tmp_path / "joblog"
    result = run_on(transport, cluster, "--job-failure", "job", "--joblog", str(joblog), "-v",
                    "--workdir", workdir, *node_args(hosts_for(transport, cluster, 1)),
                    "-j", "echo ran")
    assert (result.returncode, result.stdout) == (1, b""), result.stderr
    assert b"clstr: --workdir %s could not be entered\n" % os.fsencode(workdir) in result.stderr
    assert b"job exit %d" % WORKDIR_FAILED in result.stderr
    assert [row[6] for row in joblog_rows(joblog)] == [b"%d" % WORKDIR_FAILED]


@pytest.mark.parametrize("transport", ["ssh", "mux"])
def test_a_workdir_that_cannot_be_made_retires_the_node_as_a_failed_job_does(
        transport, cluster, shared_dir, tmp_path):
    workdir = unenterable(transport, shared_dir, tmp_path)
    node = cluster.nodes(1)[0]
    result = run_on(transport, cluster, "-v", "--workdir", workdir, "-n", node, "-j", "echo ran")
    assert (result.returncode, result.stdout) == (1, b""), result.stderr
    assert b"node %s retired: job exit %d" % (node.encode(), WORKDIR_FAILED) in result.stderr


@pytest.mark.parametrize("transport", ["ssh", "mux", "exec"])
def test_a_big_command_on_stdin_runs_after_its_prelude(transport, cluster, tmp_path):
    workdir = tmp_path / "big" if transport == "exec" else "/tmp"
    command = ": %s; printf %%s \"$CLSTR_SEQ|$V|$(pwd)\"" % ("A" * STDIN_ABOVE)
    result = run_on(transport, cluster, "--env", "V", "--workdir", str(workdir),
                    *node_args(hosts_for(transport, cluster, 1)), "-j", command,
                    env={"V": os.fsdecode(HOSTILE)})
    assert (result.returncode, result.stdout) == (0, b"1|%s|%s" % (HOSTILE, os.fsencode(
        str(workdir)))), result.stderr
