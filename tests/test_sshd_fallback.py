"""Connection sharing is an optimisation, never a reason to lose a node
(issue 11): ssh front ends that cannot share connections still run every job,
over direct connections, over the real sshd."""

import os
import subprocess

import pytest

from clstr_run import REPO, clstr_argv, node_args

# Passes everything to the cluster's ssh except the Control* options, as a
# site wrapper, Teleport's tsh or gcloud compute ssh would.
DROPS_CONTROL = r'''#!/bin/sh
skip=
for arg do
    shift
    if [ -n "$skip" ]; then
        skip=
        case $arg in Control*) continue ;; esac
        set -- "$@" -o "$arg"
        continue
    fi
    case $arg in
        -o) skip=1; continue ;;
        -oControl*) continue ;;
    esac
    set -- "$@" "$arg"
done
exec ssh -F "$CLSTR_TEST_SSH_CONFIG" "$@"
'''

# Starts masters that exit 0 at once without a socket; everything else is ssh.
MASTER_EXITS = r'''#!/bin/sh
for arg do
    case $arg in ControlMaster=yes) exit 0 ;; esac
done
exec ssh -F "$CLSTR_TEST_SSH_CONFIG" "$@"
'''

# Rejects ControlMaster the way a front end with its own option parser might.
MASTER_REJECTED = r'''#!/bin/sh
for arg do
    case $arg in ControlMaster=yes) echo "myssh: unknown option ControlMaster" >&2; exit 2 ;; esac
done
exec ssh -F "$CLSTR_TEST_SSH_CONFIG" "$@"
'''


def _front_end(tmp_path, body):
    path = tmp_path / "myssh"
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


def _run(cluster, front_end, *args, timeout=120):
    argv = clstr_argv(cluster, *args)
    argv[argv.index("--ssh-command") + 1] = front_end
    env = dict(os.environ, CLSTR_TEST_SSH_CONFIG=cluster.ssh_config)
    return subprocess.run(argv, cwd=REPO, capture_output=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def _jobs(count):
    args = []
    for n in range(count):
        args += ["-j", "echo job %d" % n]
    return args


@pytest.mark.parametrize("body", [DROPS_CONTROL, MASTER_EXITS, MASTER_REJECTED],
                         ids=["drops-control-options", "master-exits-without-socket",
                              "master-rejected"])
def test_front_end_without_connection_sharing_runs_every_job(cluster, tmp_path, body):
    # A connect timeout of 200 s: giving up on the masters by time alone
    # would take longer than _run waits, so finishing at all shows the
    # decision came from evidence (the master's log, its exit, its socket).
    result = _run(cluster, _front_end(tmp_path, body), "-v", "--connect-timeout", "200",
                  *node_args(cluster.nodes(2)), *_jobs(6))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(b"job %d" % n for n in range(6))
    said = result.stderr.decode()
    for node in cluster.nodes(2):
        assert said.count("%s: connection sharing unavailable" % node) == 1, said
    assert "retired" not in said
    assert "not up after" not in said, said


def test_front_end_without_sharing_still_retires_a_dead_host(cluster, tmp_path):
    result = _run(cluster, _front_end(tmp_path, DROPS_CONTROL), "-v",
                  *node_args(cluster.nodes(1) + cluster.dead_nodes(1)), *_jobs(4))
    assert result.returncode == 0, result.stderr
    said = result.stderr.decode()
    assert "node dead001 retired: refused" in said, said
    assert "node001: connection sharing unavailable" in said


def test_working_masters_are_not_reported_unavailable(cluster):
    argv = clstr_argv(cluster, "-v", *node_args(cluster.nodes(2)), *_jobs(6))
    result = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert b"connection sharing unavailable" not in result.stderr


# Rejects ssh's -E (a log file) as a front end with its own option parser
# might; everything else is ssh.
LOG_FILE_REJECTED = r'''#!/bin/sh
for arg do
    case $arg in -E) echo "myssh: unknown option -E" >&2; exit 2 ;; esac
done
exec ssh -F "$CLSTR_TEST_SSH_CONFIG" "$@"
'''


JOB = "echo job; echo err >&2"


@pytest.mark.parametrize("args, count", [(["--no-multiplex"] + ["-j", JOB] * 6, 6),
                                         (["-E", JOB], 3)],
                         ids=["no-multiplex", "on-each-node"])
def test_front_end_rejecting_a_log_file_still_runs_every_job(cluster, tmp_path, args, count):
    # Direct connections get -E FILE; a front end that refuses it must not
    # cost the nodes, and its complaint is not a job's output.
    result = _run(cluster, _front_end(tmp_path, LOG_FILE_REJECTED), "-v",
                     *node_args(cluster.nodes(3)), *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"job\n" * count
    assert result.stderr == b"err\n" * count
