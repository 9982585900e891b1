"""--send and --return over the real sshd: files to and from the nodes.

The nodes are homenodes (tests/cluster.py): each starts its sessions in a
home of its own, as machines that share no home directory do, so each
node's copy is a file of its own, and each notes its sessions' commands
(``cluster.sessions_on``), which is how a copy is counted.
"""

import hashlib
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from clstr_run import REPO, RUN_ID, clstr_argv, joblog_rows, node_args, wait_for_file, wait_until

MB = 1 << 20


@pytest.fixture
def homes(cluster, tmp_path):
    """``make(count)``: that many fresh homenode names and the ssh command
    naming their sessions; their homes are removed afterwards."""
    made = []

    def make(count):
        names = cluster.home_nodes(count, "%s%02d" % (RUN_ID, len(made)))
        if names is None:
            pytest.skip("homenodes need root (a login user with its own ~/.bashrc)")
        made.extend(names)
        return names, cluster.ssh_command_naming_sessions(names, tmp_path)

    yield make
    for name in made:
        shutil.rmtree(cluster.node_home(name), ignore_errors=True)


def run_here(cluster, directory, *args, timeout=300):
    """clstr run in ``directory`` (its relative paths are that directory's)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(clstr_argv(cluster, *args), cwd=str(directory), env=env,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MB), b""):
            digest.update(block)
    return digest.hexdigest()


def write_random(path, size):
    with open(path, "wb") as handle:
        for _ in range(size // MB):
            handle.write(os.urandom(MB))
        handle.write(os.urandom(size % MB))


def leftovers(directory, name):
    """Temporary files a copy of ``name`` left in ``directory``."""
    try:
        return [entry for entry in os.listdir(directory) if entry.startswith("." + name + ".")]
    except FileNotFoundError:
        return []


def sends_on(cluster, name):
    return [line for line in cluster.sessions_on(name) if b"clstr-send" in line]


# -- --send -------------------------------------------------------------------


def test_a_sent_file_reaches_each_of_30_nodes_once_through_its_master(cluster, homes,
                                                                      tmp_path):
    names, naming = homes(30)
    write_random(tmp_path / "model.bin", 50 * MB)
    os.chmod(tmp_path / "model.bin", 0o4750)  # setuid is not kept
    expected = sha256(tmp_path / "model.bin")
    logins = len(cluster.accepted_logins())
    # Two slots a node: one copy a host all the same, and 60 jobs that each
    # read the file where their node's sessions start.
    result = run_here(cluster, tmp_path, "--ssh-command", naming, *node_args(names * 2),
                      "--send", "model.bin", *["-j", "sha256sum model.bin"] * 60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == ["%s  model.bin" % expected] * 60
    # Only the masters logged in: the copies rode on them.
    assert len(cluster.accepted_logins()) - logins == 30
    owner = pwd.getpwnam(cluster.home_user).pw_uid
    for name in names:
        target = os.path.join(cluster.node_home(name), "model.bin")
        assert sha256(target) == expected, name
        info = os.stat(target)
        assert (info.st_mode & 0o7777, info.st_uid) == (0o750, owner), name
        assert len(sends_on(cluster, name)) == 1, name
        assert leftovers(cluster.node_home(name), "model.bin") == [], name


def test_a_host_with_a_master_per_slot_gets_its_files_once(cluster, homes, tmp_path):
    names, naming = homes(2)
    (tmp_path / "a.txt").write_bytes(b"a\n")
    (tmp_path / "b.txt").write_bytes(b"b\n")
    logins = len(cluster.accepted_logins())
    # Three slots a host, a master each: the first master up sends (both
    # files, in order), the others' slots wait for it (test_unit_sends.py
    # shows a master that comes up meanwhile).
    result = run_here(cluster, tmp_path, "--ssh-command", naming, *node_args(names * 3),
                      "--max-sessions", "1", "--send", "a.txt", "b.txt",
                      *["-j", "cat a.txt b.txt"] * 12)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [b"a"] * 12 + [b"b"] * 12
    assert len(cluster.accepted_logins()) - logins == 6
    for name in names:
        sends = sends_on(cluster, name)
        assert len(sends) == 2 and b"./a.txt" in sends[0] and b"./b.txt" in sends[1], sends


def test_without_masters_a_file_is_sent_over_a_login_of_its_own(cluster, homes, tmp_path):
    names, naming = homes(2)
    (tmp_path / "a.txt").write_bytes(b"a\n")
    logins = len(cluster.accepted_logins())
    result = run_here(cluster, tmp_path, "--ssh-command", naming, *node_args(names),
                      "--no-multiplex", "--send", "a.txt", *["-j", "cat a.txt"] * 4)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"a\n" * 4
    # A login a copy, a login a job.
    assert len(cluster.accepted_logins()) - logins == 2 + 4
    for name in names:
        assert len(sends_on(cluster, name)) == 1


def test_through_an_exec_template_a_file_is_sent_to_each_node(tmp_path):
    # env -C gives each "node" a directory of its own to start in.
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "f.txt").write_bytes(b"f\n")
    result = subprocess.run(
        [sys.executable, "-m", "clstr", "--exec", "env -C %s/{host}" % tmp_path, "-n", "a", "b",
         "--send", "f.txt", "-j", "cat f.txt", "-j", "cat f.txt"],
        cwd=str(tmp_path / "here"), env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"f\nf\n"
    for node in ("a", "b"):
        assert (tmp_path / node / "f.txt").read_bytes() == b"f\n"


def test_a_node_that_cannot_store_a_sent_file_is_retired_in_its_words(cluster, homes,
                                                                      tmp_path, shared_dir):
    names, naming = homes(3)
    write_random(tmp_path / "input.dat", 2 * MB)
    # The second node's home is read-only to its user.
    home_user = pwd.getpwnam(cluster.home_user)
    read_only = cluster.node_home(names[1])
    os.makedirs(read_only)
    os.chown(read_only, home_user.pw_uid, home_user.pw_gid)
    os.chmod(read_only, 0o555)
    # The jobs wait until clstr has said the node is retired: on a loaded
    # machine the other two could otherwise run all six before its copy
    # failed, and the run end with that copy unfinished.
    go = os.path.join(shared_dir, "go")  # where the nodes' user can see it
    job = wait_for_file(go) + "cmp input.dat input.dat"
    env = dict(os.environ, PYTHONPATH=REPO)
    process = subprocess.Popen(
        clstr_argv(cluster, "--ssh-command", naming, *node_args(names), "-v",
                   "--send", "input.dat", *["-j", job] * 6),
        cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    said = b""
    deadline = time.monotonic() + 120
    while b" retired: " not in said and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], 1)
        if ready:
            chunk = os.read(process.stderr.fileno(), 65536)
            if not chunk:
                break
            said += chunk
    open(go, "w").close()
    _, rest = process.communicate(timeout=300)
    stderr = (said + rest).decode()
    # Every job ran on the two nodes that have the file.
    assert process.returncode == 0, stderr
    retired = [line for line in stderr.splitlines() if line.startswith("clstr:   ")]
    assert len(retired) == 1, stderr
    assert retired[0].startswith("clstr:   %s: file: " % names[1]), stderr
    assert retired[0].endswith("Permission denied"), stderr
    assert "./.input.dat.clstr-" in retired[0], stderr
    assert not os.path.exists(os.path.join(read_only, "input.dat"))
    for name in (names[0], names[2]):
        assert sha256(os.path.join(cluster.node_home(name), "input.dat")) == sha256(
            tmp_path / "input.dat")


def session_sshd(pid):
    """The sshd process serving the connection that runs ``pid``."""
    while pid > 1:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)
        if fields[0].split("(", 1)[1] == "sshd":
            return pid
        pid = int(fields[1].split()[1])
    raise AssertionError("no sshd above the copy")


def copy_processes(cluster, name):
    """(pid, command line) of the send copy's processes on homenode ``name``."""
    return [(pid, cmdline) for pid, cmdline in cluster.remote_processes(name)
            if "clstr-send" in cmdline or cmdline.split()[:1] == ["cat"]]


def test_sshd_killed_mid_copy_loses_the_connection_and_leaves_no_partial_file(
        cluster, homes, tmp_path):
    names, naming = homes(2)
    victim = names[0]
    write_random(tmp_path / "big.bin", 200 * MB)
    process = subprocess.Popen(
        clstr_argv(cluster, "--ssh-command", naming, *node_args(names), "-v", "--send",
                   "big.bin", *["-j", "cmp big.bin big.bin"] * 4),
        cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stopped = []
    try:
        # Freeze the victim's copy mid-way (its cat stops reading, so the
        # transfer stalls), then kill the sshd of its connection.
        copy = wait_until(lambda: [pid for pid, cmdline in copy_processes(cluster, victim)
                                   if cmdline.split()[:1] == ["cat"]],
                          timeout=60, interval=0.01, what="the victim's copy")
        for pid, _ in copy_processes(cluster, victim):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        home = cluster.node_home(victim)
        assert leftovers(home, "big.bin"), "the copy had not started writing"
        os.kill(session_sshd(copy[0]), signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        process.kill()
        process.wait()
    stderr = stderr.decode()
    # The other node ran every job; the victim's connection was lost.
    assert process.returncode == 0, stderr
    assert "clstr:   %s: connection lost" % victim in stderr, stderr
    # Thawed, the copy reads its EOF, finds the file short, removes what it
    # had stored and ends: nothing under the file's name, no leftover.
    wait_until(lambda: not copy_processes(cluster, victim), what="the copy's end")
    assert not os.path.exists(os.path.join(home, "big.bin"))
    assert leftovers(home, "big.bin") == []


def test_relative_paths_are_the_jobs_own_under_workdir(cluster, homes, tmp_path):
    names, naming = homes(2)
    (tmp_path / "in.txt").write_bytes(b"data\n")
    result = run_here(cluster, tmp_path, "--ssh-command", naming, *node_args(names),
                      "--workdir", "run/here", "--send", "in.txt", "--return", "out.txt",
                      "--output-dir", "out", "--joblog", "log",
                      "-j", "cp in.txt out.txt", "-j", "cp in.txt out.txt")
    assert result.returncode == 0, result.stderr
    # Only the nodes that ran a job: on a loaded machine one node can run
    # both before the other's copy has finished (the run then ends with it).
    ran_on = {row[1].decode() for row in joblog_rows(tmp_path / "log")}
    assert ran_on and ran_on <= set(names), ran_on
    for name in ran_on:
        assert (open(os.path.join(cluster.node_home(name), "run/here/in.txt"), "rb").read()
                == b"data\n")
    for seq in (1, 2):
        assert (tmp_path / "out" / str(seq) / "out.txt").read_bytes() == b"data\n"


def test_dry_run_shows_the_copies_and_touches_nothing(cluster, tmp_path):
    (tmp_path / "input.dat").write_bytes(b"x" * 10)
    result = run_here(cluster, tmp_path, "-n", "node001", "--send", "input.dat", "-j", "true",
                      "--return", "out.txt", "--output-dir", "results", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 4, lines  # the master, the send, the job, the return
    assert lines[1].endswith("  # on stdin: input.dat (10 bytes)") and "clstr-send" in lines[1]
    assert lines[3].endswith("  # stdout to results/1/out.txt") and "clstr-return" in lines[3]
    assert sorted(os.listdir(tmp_path)) == ["input.dat"]


# -- --return -----------------------------------------------------------------


JOB = 'echo "job $CLSTR_JOB on $CLSTR_TEST_NODE" > result.txt'


def test_returned_files_land_under_output_dir_for_completed_attempts_only(cluster, homes,
                                                                          tmp_path):
    names, naming = homes(3)
    jobs = ['CLSTR_JOB=%d; %s' % (n, JOB) for n in range(1, 10)]
    # Job 5 writes its file, then fails: its file stays on the node.
    jobs[4] += "; exit 3"
    args = [arg for job in jobs for arg in ("-j", job)]
    result = run_here(cluster, tmp_path, "--ssh-command", naming, *node_args(names),
                      "--job-failure", "job", "--return", "result.txt", "--output-dir",
                      "results", "--joblog", "log", *args)
    assert result.returncode == 1, result.stderr
    hosts = {int(row[0]): row[1].decode() for row in joblog_rows(tmp_path / "log")}
    for n in range(1, 10):
        returned = tmp_path / "results" / str(n) / "result.txt"
        if n == 5:
            assert not returned.exists()
            continue
        assert returned.read_text() == "job %d on %s\n" % (n, hosts[n])
    left = [entry for _, _, entries in os.walk(tmp_path / "results") for entry in entries
            if entry.endswith(".partial")]
    assert left == []


def test_returned_files_land_here_under_their_job_number(cluster, homes, tmp_path):
    names, naming = homes(2)
    args = [arg for n in (1, 2, 3) for arg in (
        "-j", "mkdir -p copies && echo job %d on $CLSTR_TEST_NODE > copies/%d.txt" % (n, n))]
    result = run_here(cluster, tmp_path, "--ssh-command", naming, *node_args(names),
                      "--return", "copies/{#}.txt", "--joblog", "log", *args)
    assert result.returncode == 0, result.stderr
    hosts = {int(row[0]): row[1].decode() for row in joblog_rows(tmp_path / "log")}
    assert sorted(os.listdir(tmp_path / "copies")) == ["1.txt", "2.txt", "3.txt"]
    for n in (1, 2, 3):
        assert (tmp_path / "copies" / ("%d.txt" % n)).read_text() == "job %d on %s\n" % (
            n, hosts[n])


def test_returned_files_are_named_by_the_jobs_argument_template(cluster, homes, tmp_path):
    names, naming = homes(2)
    # Each input value names the file its job makes there, and here.
    result = run_here(cluster, tmp_path, "--ssh-command", naming, *node_args(names),
                      "--return", "sorted/{/.}.txt", "--return", "{#}-{%}-{host}.log",
                      "-j", "mkdir -p sorted && echo {} > sorted/{/.}.txt && "
                      "echo on $CLSTR_TEST_NODE > {#}-{%}-{host}.log",
                      "--joblog", "log", ":::", "in/a b.csv", "in/c.csv")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sorted" / "a b.txt").read_text() == "in/a b.csv\n"
    assert (tmp_path / "sorted" / "c.txt").read_text() == "in/c.csv\n"
    hosts = {int(row[0]): row[1].decode() for row in joblog_rows(tmp_path / "log")}
    for seq, host in hosts.items():
        assert (tmp_path / ("%d-1-%s.log" % (seq, host))).read_text() == "on %s\n" % host
    # A value that would land a file outside is clstr's own refusal (exit 3).
    result = run_here(cluster, tmp_path, "--ssh-command", naming, "-n", names[0],
                      "--return", "{}", "-j", "true", ":::", "../escaped")
    assert result.returncode == 3, result.stderr
    assert b"'..' would land outside" in result.stderr, result.stderr
    assert not (tmp_path.parent / "escaped").exists()


def test_a_missing_returned_file_fails_the_attempt_as_a_job_exit_would(cluster, homes,
                                                                       tmp_path):
    names, naming = homes(2)
    result = run_here(cluster, tmp_path, "--ssh-command", naming, *node_args(names),
                      "--job-failure", "job", "--return", "result.txt", "--output-dir", "out",
                      "--joblog", "log", "-j", "true", "-j", "echo yes > result.txt")
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert re.search(r"clstr:   job 1 'true': homenode\w+: file: cat: \./result\.txt: "
                     r"No such file or directory\n", stderr), stderr
    # The node that failed to give it is not retired (--job-failure job).
    assert "retired" not in stderr, stderr
    rows = {int(row[0]): row for row in joblog_rows(tmp_path / "log")}
    assert rows[1][6] == b"255" and rows[2][6] == b"0"
    index = sorted((tmp_path / "out" / "index.tsv").read_text().splitlines()[1:])
    assert index[0].startswith("1\tfile\t") and index[1].startswith("2\t0\t"), index
    assert (tmp_path / "out" / "2" / "result.txt").read_text() == "yes\n"
    assert not (tmp_path / "out" / "1").exists() or not os.listdir(tmp_path / "out" / "1")


def test_a_link_planted_in_the_output_dir_is_not_followed_and_is_exit_3(cluster, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(str(tmp_path / "elsewhere"), str(tmp_path / "out" / "1"))
    result = run_here(cluster, tmp_path, "-n", "node001", "--return", "/etc/hostname",
                      "--output-dir", "out", "-j", "true")
    assert result.returncode == 3, result.stderr
    assert b"cannot write out/1/etc/hostname" in result.stderr, result.stderr
    assert os.listdir(tmp_path / "elsewhere") == []


@pytest.mark.parametrize("args, words", [
    (["--send", "nothere.dat"], "--send nothere.dat: No such file or directory"),
    (["--send", "."], "--send .: not a regular file"),
    (["--return", "r.txt"], "put {#}"),
    (["--return", "../r{#}.txt"], "'..' would land outside"),
    (["--return", "/tmp/r{#}.txt"], "lands outside the current directory"),
    (["--return", "r{1}.txt"], "--return r{1}.txt: {1}, but there are only 0 input groups"),
])
def test_file_usage_errors_are_one_line_and_touch_nothing(cluster, tmp_path, args, words):
    result = run_here(cluster, tmp_path, "-n", "node001", "-j", "true", "--joblog", "log",
                      *args)
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert stderr.count("\n") == 1 and words in stderr, stderr
    assert os.listdir(tmp_path) == []
