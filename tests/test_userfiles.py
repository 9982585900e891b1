"""Users' files: clstr touches a file only when a run really starts, and
writes it the way the user would expect (through their own links, in place
for pipes and devices, with their umask, never through a link another user
planted).  Numbers and paths are checked before anything is touched."""

import ast
import errno
import glob
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest

from clstr_run import REPO, clstr, node_args, start_clstr

FAKESSH = os.path.join(REPO, "tests", "fakessh")
JOB_LINE = b"<'Job' "


def run(*args, **kwargs):
    """clstr with the local stand-in for ssh (for what never reaches a node)."""
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([sys.executable, "-m", "clstr", "--ssh-command", FAKESSH]
                          + list(args), cwd=REPO, capture_output=True, timeout=60, **kwargs)


def one_line_usage_error(result, mentions):
    assert result.returncode == 2, result
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clstr: error: "), lines
    assert mentions in lines[0], lines


def wait_for(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def other_user_uid():
    try:
        return pwd.getpwnam("clstrtest").pw_uid
    except KeyError:
        pytest.skip("needs the clstrtest user (made by the cluster fixture)")


def plant_foreign_links(tmp_path, *names):
    """A sticky world-writable directory holding links ``names``, owned by
    another user, to a file of ours: (directory, victim)."""
    public = tmp_path / "public"
    public.mkdir()
    os.chmod(str(public), 0o1777)
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's file\n")
    for name in names:
        planted = public / name
        planted.symlink_to(victim)
        os.lchown(str(planted), other_user_uid(), -1)
    return public, victim


def blocked_job(flag):
    """A job that runs until ``flag`` exists: the test decides when it ends."""
    return "while [ ! -e %s ]; do sleep 0.05; done; echo done" % flag


def read_available(fd):
    """What a non-blocking ``fd`` holds now (b"" if nothing)."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# -- nothing touched before a run really starts ------------------------------------


def _existing_outputs(tmp_path):
    files = {name: tmp_path / name for name in ("joblog", "out", "err", "active")}
    for name, path in files.items():
        path.write_bytes(b"precious " + name.encode() + b"\n")
    return files


def test_dry_run_leaves_every_output_file_as_it_was_and_creates_no_output_dir(tmp_path):
    files = _existing_outputs(tmp_path)
    before = {name: path.read_bytes() for name, path in files.items()}
    outdir = tmp_path / "outdir"
    result = run("--dry-run", "-n", "a", "-j", "echo hi", "--joblog", str(files["joblog"]),
                 "-o", str(files["out"]), "-e", str(files["err"]),
                 "-A", str(files["active"]))
    assert result.returncode == 0, result.stderr
    result = run("--dry-run", "-n", "a", "-j", "echo hi", "--output-dir", str(outdir))
    assert result.returncode == 0, result.stderr
    assert {name: path.read_bytes() for name, path in files.items()} == before
    assert not outdir.exists()


def test_late_usage_error_leaves_the_joblog_and_creates_no_output_dir(tmp_path):
    files = _existing_outputs(tmp_path)
    outdir = tmp_path / "outdir"
    result = run("-n", "a", "-j", "echo hi", "--joblog", str(files["joblog"]),
                 "--output-dir", str(outdir), "-o", "/nonexistent/x")
    one_line_usage_error(result, "--stdout")
    assert files["joblog"].read_bytes() == b"precious joblog\n"
    assert not outdir.exists()


@pytest.mark.parametrize("option", ["--joblog", "-o", "-e", "-A", "--output-dir"])
def test_an_output_in_a_missing_directory_is_one_line_exit_2(option, tmp_path):
    marker = tmp_path / "ran"
    path = str(tmp_path / "missing" / "file")
    if option == "--output-dir":
        # --output-dir makes missing parents, but not under a file.
        (tmp_path / "plain").write_text("")
        path = str(tmp_path / "plain" / "dir")
    result = run(option, path, "-n", "a", "-j", "touch %s" % marker)
    one_line_usage_error(result, "cannot write")
    assert not marker.exists()


def test_stdin_for_both_nodes_and_jobs_is_a_usage_error():
    result = run("-N", "-", "-J", "-", input=b"a\n")
    one_line_usage_error(result, "stdin")


@pytest.mark.parametrize("option, value", [
    ("--timeout", "2200000"), ("--timeout", "inf"), ("--timeout", "nan"),
    ("--connect-timeout", "1e300"), ("--retry-nodes", "inf"), ("--alive-interval", "1e7"),
])
def test_a_time_no_timer_can_hold_is_a_usage_error_naming_the_option(option, value, tmp_path):
    marker = tmp_path / "ran"
    result = run(option, value, "-n", "a", "-j", "touch %s" % marker)
    one_line_usage_error(result, option)
    assert not marker.exists()


# -- -A, the active-nodes file -------------------------------------------------------


def test_active_nodes_through_the_users_links_updates_the_target_and_keeps_the_links(
        cluster, shared_dir, tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "active"
    target.write_bytes(b"old\n")
    os.chmod(str(target), 0o640)
    middle = tmp_path / "middle"
    middle.symlink_to(target)
    link = tmp_path / "link"
    link.symlink_to("middle")  # a chain, the last link relative
    flag = os.path.join(shared_dir, "go")
    process = start_clstr(cluster, "-A", str(link), *node_args(cluster.nodes(1)),
                          "-j", blocked_job(flag))
    try:
        wait_for(lambda: JOB_LINE in target.read_bytes(), "the job listed in the target")
        assert link.is_symlink() and middle.is_symlink()
    finally:
        open(flag, "w").close()
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert os.readlink(str(link)) == "middle" and os.readlink(str(middle)) == str(target)
    assert target.read_bytes() == b""
    assert stat.S_IMODE(os.stat(str(target)).st_mode) == 0o640  # the user's mode kept
    assert sorted(os.listdir(str(real_dir))) == ["active"]  # no temporary left


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's link needs root")
@pytest.mark.parametrize("option", ["-A", "--joblog", "-o"])
def test_refuses_another_users_link_in_a_sticky_world_writable_dir(tmp_path, option):
    public, victim = plant_foreign_links(tmp_path, "active")
    planted = public / "active"
    marker = tmp_path / "ran"
    result = run(option, str(planted), "-n", "a", "-j", "touch %s" % marker)
    one_line_usage_error(result, "another user")
    assert victim.read_bytes() == b"root's file\n"
    assert planted.is_symlink()
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="a directory owned by another user needs root")
def test_follows_a_link_planted_by_the_sticky_directorys_own_owner(tmp_path):
    # As the kernel's protected_symlinks does: the directory's owner may put
    # links in it (here another user's /tmp-like directory, their link to our file).
    public, target = tmp_path / "public", tmp_path / "target"
    public.mkdir()
    os.chmod(str(public), 0o1777)
    os.chown(str(public), other_user_uid(), -1)
    target.write_bytes(b"old\n")
    link = public / "joblog"
    link.symlink_to(target)
    os.lchown(str(link), other_user_uid(), -1)
    result = run("--joblog", str(link), "-n", "a", "-j", "echo hi")
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert target.read_bytes().startswith(b"Seq\t"), target.read_bytes()


def test_active_nodes_fifo_is_written_in_place(cluster, shared_dir, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    reader = os.open(str(fifo), os.O_RDONLY | os.O_NONBLOCK)
    flag = os.path.join(shared_dir, "go")
    seen = []
    try:
        process = start_clstr(cluster, "-A", str(fifo), *node_args(cluster.nodes(1)),
                              "-j", blocked_job(flag))
        try:
            def listed():
                seen.append(read_available(reader))
                return JOB_LINE in b"".join(seen)
            wait_for(listed, "the job listed through the FIFO")
        finally:
            open(flag, "w").close()
            out, err = process.communicate(timeout=120)
    finally:
        os.close(reader)
    assert process.returncode == 0, err
    assert stat.S_ISFIFO(os.lstat(str(fifo)).st_mode)


@pytest.mark.parametrize("where", ["/dev/stderr", "pipe"])
def test_active_nodes_on_a_device_or_pipe_is_written_in_place(cluster, shared_dir, where):
    """-A /dev/stderr, and -A >(cat), which is /dev/fd/N, a pipe."""
    device_before = os.lstat("/dev/stderr")
    flag = os.path.join(shared_dir, "go")
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    try:
        if where == "pipe":
            path, kwargs = "/dev/fd/%d" % write_end, {"pass_fds": (write_end,)}
        else:
            path, kwargs = "/dev/stderr", {"stderr": write_end}
        process = start_clstr(cluster, "-A", path, *node_args(cluster.nodes(1)),
                              "-j", blocked_job(flag), **kwargs)
        os.close(write_end)
        write_end = None
        seen = []
        try:
            def listed():
                seen.append(read_available(read_end))
                return JOB_LINE in b"".join(seen)
            wait_for(listed, "the job listed on " + where)
        finally:
            open(flag, "w").close()
            process.communicate(timeout=120)
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)
    assert process.returncode == 0, b"".join(seen)
    after = os.lstat("/dev/stderr")
    assert stat.S_ISLNK(after.st_mode) and after.st_ino == device_before.st_ino


@pytest.mark.parametrize("umask, mode", [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_a_new_active_nodes_file_gets_0666_minus_the_umask(cluster, tmp_path, umask, mode):
    active = tmp_path / "active"
    result = clstr(cluster, "-A", str(active), *node_args(cluster.nodes(1)), "-j", "true",
                   preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(str(active)).st_mode) == mode


# -- --output-dir ------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_output_dir_files_get_0666_minus_the_umask(tmp_path, umask, mode):
    outdir = tmp_path / "out"
    result = run("--output-dir", str(outdir), "-n", "a", "-j", "echo hi",
                 preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    assert (outdir / "1.out").read_bytes() == b"hi\n"
    for name in ("1.out", "1.err"):
        assert stat.S_IMODE(os.stat(str(outdir / name)).st_mode) == mode, name


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's link needs root")
def test_output_dir_never_follows_a_planted_partial_file_link(cluster, tmp_path):
    public, victim = plant_foreign_links(tmp_path, ".1.out.partial", ".1.err.partial", "1.out")
    result = clstr(cluster, "--output-dir", str(public), *node_args(cluster.nodes(1)),
                   "-j", "echo hi")
    assert result.returncode == 0, result.stderr
    assert victim.read_bytes() == b"root's file\n"
    out = public / "1.out"
    assert not out.is_symlink() and out.read_bytes() == b"hi\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's link needs root")
def test_output_dir_refuses_a_planted_index_link(cluster, tmp_path):
    public, victim = plant_foreign_links(tmp_path, "index.tsv")
    result = clstr(cluster, "--output-dir", str(public), *node_args(cluster.nodes(1)),
                   "-j", "echo hi")
    assert result.returncode == 3, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "index.tsv" in lines[0], lines
    assert victim.read_bytes() == b"root's file\n"
    assert sorted(os.listdir(str(public))) == ["index.tsv"]  # nothing ran


def test_resume_appends_to_the_output_dir_index(cluster, tmp_path):
    joblog, outdir = tmp_path / "joblog", tmp_path / "out"
    common = ["--joblog", str(joblog), "--output-dir", str(outdir)]
    common += node_args(cluster.nodes(2))
    first = clstr(cluster, *common, "-j", "echo a", "-j", "echo b")
    assert first.returncode == 0, first.stderr
    second = clstr(cluster, "--resume", *common, "-j", "echo a", "-j", "echo b",
                   "-j", "echo c")
    assert second.returncode == 0, second.stderr
    index = (outdir / "index.tsv").read_text().splitlines()
    assert index[0] == "seq\tstatus\thost\tcommand"
    assert sorted(line.split("\t")[0] for line in index[1:]) == ["1", "2", "3"]
    assert [(outdir / name).read_text() for name in ("1.out", "2.out", "3.out")] == \
        ["a\n", "b\n", "c\n"]


# -- closed standard fds -------------------------------------------------------------------


@pytest.mark.parametrize("closed", [(1,), (2,), (0, 1, 2)])
def test_closed_standard_fds_keep_job_output_out_of_the_joblog(cluster, tmp_path, closed):
    joblog = tmp_path / "joblog"

    def close_fds():
        for fd in closed:
            os.close(fd)

    result = clstr(cluster, "--joblog", str(joblog), *node_args(cluster.nodes(2)),
                   *(["-j", "echo out; echo err >&2"] * 4), preexec_fn=close_fds)
    assert result.returncode == 0, result.stderr
    lines = joblog.read_bytes().splitlines()
    assert lines[0].startswith(b"Seq\tHost\t") and len(lines) == 5, lines
    assert all(len(line.split(b"\t")) == 9 for line in lines), lines
    resumed = clstr(cluster, "--joblog", str(joblog), "--resume",
                    *node_args(cluster.nodes(2)), *(["-j", "echo out; echo err >&2"] * 4))
    assert resumed.returncode == 0 and resumed.stdout == b"", resumed.stderr


@pytest.mark.parametrize("closed", [1, 2])
def test_closed_standard_fd_without_a_joblog_the_run_still_works(cluster, closed):
    result = clstr(cluster, *node_args(cluster.nodes(2)), *(["-j", "echo out; echo err >&2"] * 4),
                   preexec_fn=lambda: os.close(closed))
    assert result.returncode == 0, result.stderr
    kept = result.stderr if closed == 1 else result.stdout
    assert kept.splitlines() == [b"err" if closed == 1 else b"out"] * 4


# -- Python too old ------------------------------------------------------------------


def _as_old_python(run_entry):
    code = ("import sys, runpy\n"
            "sys.version_info = (3, 7, 9, 'final', 0)\n"
            "sys.argv = ['clstr', '--version']\n" + run_entry)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          timeout=60)


def test_python_older_than_3_8_is_told_so_by_python_m_clstr():
    result = _as_old_python("runpy.run_module('clstr', run_name='__main__', alter_sys=True)")
    assert result.returncode == 2
    assert result.stderr == b"clstr: needs Python 3.8 or newer (this is 3.7)\n"
    assert result.stdout == b""


def test_python_older_than_3_8_is_told_so_by_the_zipapp(tmp_path):
    pyz = str(tmp_path / "clstr.pyz")
    subprocess.run(["bash", os.path.join(REPO, "build_zipapp.sh"), pyz], check=True,
                   capture_output=True, timeout=60)
    result = _as_old_python("runpy.run_path(%r, run_name='__main__')" % pyz)
    assert result.returncode == 2
    assert result.stderr == b"clstr: needs Python 3.8 or newer (this is 3.7)\n"


def _old_pythons():
    """Interpreters older than 3.8 on this machine (pyenv keeps some)."""
    candidates = glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin/python"))
    candidates += filter(None, (shutil.which(name) for name in ("python2", "python2.7")))
    found = {}
    for path in candidates:
        probe = subprocess.run([path, "-c", "import sys; print(sys.version_info[0] * 100 + "
                                "sys.version_info[1])"], capture_output=True, timeout=60)
        if probe.returncode == 0 and int(probe.stdout) < 308:
            found[int(probe.stdout)] = path
    return [found[version] for version in sorted(found)]


def test_the_entry_parses_on_old_pythons():
    """The entry has to get as far as its version check on any Python."""
    source = open(os.path.join(REPO, "clstr", "__main__.py"), "rb").read()
    for version in ((3, 4), (3, 7)):
        try:
            ast.parse(source, feature_version=version)
        except ValueError:
            continue  # this Python no longer parses that old a grammar


@pytest.mark.parametrize("entry", ["-m clstr", "zipapp"])
def test_a_real_old_python_is_told_it_is_too_old(entry, tmp_path):
    pythons = _old_pythons()
    if not pythons:
        pytest.skip("no Python older than 3.8 installed")
    argv = ["-m", "clstr"]
    if entry == "zipapp":
        argv = [str(tmp_path / "clstr.pyz")]
        subprocess.run(["bash", os.path.join(REPO, "build_zipapp.sh"), argv[0]], check=True,
                       capture_output=True, timeout=60)
    for python in pythons:
        result = subprocess.run([python] + argv + ["--version"], cwd=REPO,
                                capture_output=True, timeout=60)
        assert result.returncode == 2, (python, result.stderr)
        assert re.match(rb"clstr: needs Python 3\.8 or newer \(this is [23]\.\d+\)\n\Z",
                        result.stderr), (python, result.stderr)


# -- write failures are clstr's own (LocalIOError), named by file -------------------


def _raises_local_io(action, what):
    from clstr.errors import LocalIOError
    with pytest.raises(LocalIOError) as caught:
        action()
    assert caught.value.what == what
    return caught.value


def test_a_joblog_that_cannot_be_written_is_a_local_io_error():
    from clstr.records import Joblog
    error = _raises_local_io(lambda: Joblog("/dev/full").start(), "/dev/full")
    assert error.error.errno == errno.ENOSPC


def test_an_active_nodes_file_that_cannot_be_written_is_a_local_io_error(tmp_path):
    from clstr.userfiles import snapshot_file
    _raises_local_io(lambda: snapshot_file("/dev/full").write(b"x\n"), "/dev/full")
    directory = tmp_path / "gone"
    directory.mkdir()
    target = snapshot_file(str(directory / "active"))
    directory.rmdir()
    _raises_local_io(lambda: target.write(b"x\n"), str(directory / "active"))


def _make_full(fd):
    """From now on, writes to ``fd`` fail as on a full disk."""
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, fd)
    os.close(full)


def test_output_dir_write_failures_are_local_io_errors_and_leave_no_partial(tmp_path):
    from clstr.output.delivery import Delivery
    from clstr.userfiles import OutputDir
    outdir = OutputDir(str(tmp_path / "out"))
    outdir.start()
    delivery = Delivery({}, output_dir=outdir)
    files = delivery.open(1, "host")
    partial = files._partials[1]
    _make_full(files._fds[1])
    _raises_local_io(lambda: files.data(1, b"x"), partial)
    files.close(False)
    assert sorted(os.listdir(str(tmp_path / "out"))) == ["index.tsv"]
    _make_full(outdir._index_fd)
    _raises_local_io(lambda: delivery.record(1, None, "host", "true"),
                     str(tmp_path / "out" / "index.tsv"))
    delivery.close()


def test_resolve_links_follows_a_relative_chain_and_stops_at_proc(tmp_path):
    from clstr.userfiles import resolve_links
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").symlink_to("../target")
    (tmp_path / "a").symlink_to("sub/b")
    assert resolve_links(str(tmp_path / "a")) == str(tmp_path / "target")
    assert resolve_links("/dev/stderr") is None
    (tmp_path / "loop").symlink_to("loop")
    from clstr.userfiles import UserFileError
    with pytest.raises(UserFileError):
        resolve_links(str(tmp_path / "loop"))
