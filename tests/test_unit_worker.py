"""The worker (transport/worker.py) run locally under dash and bash, fed its
frames as clstr feeds them (the next only after the last one's end
reports), and the framing itself.  The same worker over the real Slurm is
in tests/slurm/test_slurm.py."""

import fcntl
import os
import select
import shutil
import signal
import struct
import subprocess
import termios

import pytest

from clstr.transport.endreport import ReportReader
from clstr.transport.prelude import WORKER_SEQ, job_prelude
from clstr.transport.worker import READY_TOKEN, job_frame, setup_frame, worker_argv
from clstr_run import wait_until

SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)]
# dash on a node without bash: the worker stays in dash, with no job control,
# and forks a watcher for each job (with bash there, it runs in bash).
if "dash" in SHELLS and "bash" in SHELLS:
    SHELLS.append("dash-alone")


def path_without_bash(directory):
    """A PATH (in ``directory``) holding every command of this one but bash."""
    os.makedirs(directory, exist_ok=True)
    for entry in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(entry):
            continue
        for name in os.listdir(entry):
            link = os.path.join(directory, name)
            if name != "bash" and not os.path.lexists(link):
                os.symlink(os.path.join(entry, name), link)
    return directory
F_GETPIPE_SZ = 1032  # fcntl.F_GETPIPE_SZ from Python 3.10 on


class LocalWorker:
    """The worker under ``shell``, its stdout and stderr read per job, each
    job after ``prelude`` (the worker's slot prelude)."""

    def __init__(self, shell, cwd, prelude=b""):
        self.shell = shell
        argv = [os.fsdecode(word) for word in worker_argv()]
        env = dict(os.environ)
        if shell == "dash-alone":
            shell = "dash"
            env["PATH"] = path_without_bash(os.path.join(cwd, ".no-bash"))
        argv[0] = shell
        env["SHELL"] = shutil.which(shell)
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, cwd=cwd, env=env)
        self.count = 0
        self.token_prefix = "%x" % os.getpid()
        self.send(setup_frame(self.token_prefix, prelude))
        for stream in (self.process.stdout, self.process.stderr):
            reader = ReportReader(READY_TOKEN, before_start="drop")
            self._read(stream, reader, "started")
            assert reader.said_before_start == b""
        # What reads the frames for the worker's life: bash's reader, or
        # nothing (a watcher per job).
        self.reader = children(self.process.pid)

    @staticmethod
    def _read(stream, reader, until):
        """Feed ``stream`` to ``reader`` until its ``until`` attribute is
        true; returns what it passed on."""
        data = b""
        while not getattr(reader, until):
            # A worker that stopped answering fails the test, never hangs it.
            ready, _, _ = select.select([stream], [], [], 30)
            assert ready, "no report from the worker within 30 s"
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, "the worker ended before its report"
            data += reader.feed(chunk)
        return data

    def send(self, data):
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def start(self, command):
        """Send ``command``; returns its reports' token."""
        self.count += 1
        self.send(job_frame(self.count, self.count, command))
        return "%s-%d" % (self.token_prefix, self.count)

    def finish(self, token):
        """Read until both end reports of ``token``: (status, stdout, stderr)."""
        out = {}
        for stream in (self.process.stdout, self.process.stderr):
            # A ready worker runs a frame as it comes: no start report.
            reader = ReportReader(token, before_start="drop", after_end="drop")
            reader.start()
            data = self._read(stream, reader, "ended")
            out[stream] = (reader.status, data)
        assert out[self.process.stdout][0] == out[self.process.stderr][0]
        return out[self.process.stdout][0], out[self.process.stdout][1], out[self.process.stderr][1]

    def run(self, command):
        return self.finish(self.start(command))

    def close(self):
        """Close its stdin: (its exit status, what it wrote on stdout since)."""
        self.process.stdin.close()
        code = self.process.wait(timeout=30)
        rest = self.process.stdout.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return code, rest


@pytest.fixture(params=SHELLS)
def worker(request, tmp_path):
    started = LocalWorker(request.param, str(tmp_path))
    yield started
    if started.process.poll() is None:
        started.process.kill()
        started.process.wait()


def test_a_frame_is_one_line_whatever_the_command_holds():
    command = b"echo 'a'\n\"b\" $c \\\r\n\n"
    for frame in (job_frame(1, 1, command), setup_frame("ab12", b"export A='x\ny'; ")):
        assert frame.count(b"\n") == 1 and frame.endswith(b"\n")


@pytest.mark.parametrize("shell", SHELLS)
def test_each_job_runs_the_slot_prelude_with_its_own_number(shell, tmp_path):
    # The prelude comes once, in the setup frame; each job frame brings the
    # job's number.
    prelude = job_prelude(WORKER_SEQ, 2, "lab01", [(b"V", b"it's\n!")], b"sub dir")
    started = LocalWorker(shell, str(tmp_path), prelude)
    try:
        probe = b'printf "%s|" "$CLSTR_SEQ" "$CLSTR_SLOT" "$CLSTR_HOST" "$V" "${PWD##*/}"'
        for number in (1, 2):
            assert started.run(probe) == (
                0, b"%d|2|lab01|it's\n!|sub dir|" % number, b"")
    finally:
        started.process.kill()
        started.process.wait()


def test_the_command_arrives_byte_for_byte(worker):
    command = b"printf '%s|' \"it's\" '\"q\"' '$x' 'a\\b'\nprintf '%s' \"two\nlines\""
    status, out, err = worker.run(command)
    assert (status, out, err) == (0, b"it's|\"q\"|$x|a\\b|two\nlines", b"")


def test_a_frame_cut_short_never_runs(worker, tmp_path):
    marker = tmp_path / "ran"
    assert worker.run(b"echo first") == (0, b"first\n", b"")
    # The worker's stdin ends in the middle of a frame: no newline, no job.
    worker.send(job_frame(99, 99, b"touch %s" % os.fsencode(marker))[:-1])
    code, said = worker.close()
    assert (code, said) == (0, b"")
    assert not marker.exists()


def test_stdout_and_stderr_stay_apart_and_a_last_line_without_newline_is_the_jobs(worker):
    # Each stream is cut at its own end report, found mid-line.
    assert worker.run(b"printf out; printf err >&2") == (0, b"out", b"err")
    assert worker.run(b"echo two; echo lines; echo on >&2; printf err >&2; exit 3") == (
        3, b"two\nlines\n", b"on\nerr")


def test_a_jobs_cd_export_and_ulimit_do_not_reach_the_next_job(worker, tmp_path):
    (tmp_path / "sub").mkdir()
    assert worker.run(b"cd sub; export LEAK=1; ulimit -n 64; umask 077")[0] == 0
    status, out, _ = worker.run(b'echo "${LEAK-unset}"; pwd; ulimit -n; umask')
    assert status == 0
    leak, cwd, files, umask = out.decode().split()
    assert (leak, cwd) == ("unset", str(tmp_path))
    assert files != "64" and umask != "0077"


def test_a_job_reading_stdin_cannot_take_the_next_frame(worker):
    assert worker.run(b"cat; echo read-nothing") == (0, b"read-nothing\n", b"")
    assert worker.run(b"echo next") == (0, b"next\n", b"")


def test_a_job_holds_none_of_the_workers_fds(worker):
    # fd 3 carries the frames, fd 5 the reader's: a job (or an ssh it runs)
    # holding either could read the next job's frame or keep the pipe open
    # past clstr's EOF; fd 4 is the worker's stderr.
    probe = (b"for fd in 3 4 5 6 7 8 9; do { true <&$fd; } 2>/dev/null && echo has-$fd; done; "
             b"echo ok")
    assert worker.run(probe) == (0, b"ok\n", b"")


def process_state(pid):
    """``pid``'s state and parent from /proc ((b"R", 1) say), None once it
    is gone."""
    try:
        with open("/proc/%s/stat" % pid, "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def alive(pid):
    """Whether ``pid`` runs (a zombie does not)."""
    state = process_state(pid)
    return state is not None and state[0] != b"Z"


def test_the_frames_end_stops_the_jobs_group_reports_its_end_and_the_worker_exits(
        worker, tmp_path):
    # clstr stops a job by closing the worker's stdin; a lost connection
    # closes it too.
    pid_file = tmp_path / "pid"
    token = worker.start(b"sleep 300 & echo $! > %s.tmp; mv %s.tmp %s; sleep 301"
                         % ((os.fsencode(pid_file),) * 3))
    wait_until(pid_file.exists, what="the job to start")
    left_behind = int(pid_file.read_text())
    worker.process.stdin.close()
    status, _, _ = worker.finish(token)
    assert status == 143
    # The end report comes once the job's whole group is gone, its
    # background sleep too.
    assert not alive(left_behind)
    assert worker.process.wait(timeout=30) == 0


def test_lines_that_are_no_frame_are_ignored(worker, tmp_path):
    # Each would leave a mark if the worker ran it as shell text.
    marks = [tmp_path / name for name in ("k", "x", "jo")]
    assert worker.run(b"true")[0] == 0
    worker.send(b"k; touch %s\n\ngarbage\nx j 1 1 touch %s\njo;touch %s\n"
                % tuple(os.fsencode(mark) for mark in marks))
    assert worker.run(b"echo still") == (0, b"still\n", b"")
    assert not any(mark.exists() for mark in marks)


def test_the_frames_end_right_behind_a_job_frame_stops_that_job(worker, tmp_path):
    # The end may reach the worker before it has started the job.
    marker = tmp_path / "ran-on"
    token = worker.start(b"sleep 300; touch %s" % os.fsencode(marker))
    worker.process.stdin.close()
    assert worker.finish(token)[0] == 143
    assert worker.process.wait(timeout=30) == 0
    assert not marker.exists()


@pytest.mark.parametrize("shell", [shell for shell in SHELLS if shell != "dash-alone"])
def test_in_bash_a_job_started_after_the_frames_end_is_stopped_as_it_starts(shell, tmp_path):
    # The end's signal may be taken before the worker has the job's pid
    # (between two commands of the worker's): it is kept for the job.  Made
    # certain here with a frame queued behind a running job (which clstr
    # never sends): the end stops the first job, then the second as it
    # starts.  Without bash the watcher reads the frames while a job runs:
    # the queued frame would be its.
    worker = LocalWorker(shell, str(tmp_path))
    try:
        started = tmp_path / "started"
        marker = tmp_path / "ran-on"
        first = worker.start(b"touch %s; sleep 300" % os.fsencode(started))
        wait_until(started.exists, what="the first job to start")
        second = worker.start(b"sleep 2; touch %s" % os.fsencode(marker))
        worker.process.stdin.close()
        assert worker.finish(first)[0] == 143
        assert worker.finish(second)[0] == 143
        assert worker.process.wait(timeout=30) == 0
        assert not marker.exists()
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait()


def test_with_bash_one_reader_takes_the_frames_and_a_job_is_one_process(worker, tmp_path):
    started = tmp_path / "started"
    token = worker.start(b"touch %s; exec sleep 300" % os.fsencode(started))
    wait_until(started.exists, what="the job to start")
    running = children(worker.process.pid)
    if worker.shell == "dash-alone":
        # No bash: a watcher for each job, beside it.
        assert worker.reader == [] and len(running) == 2
    else:
        assert len(worker.reader) == 1 and len(running) == 2
        assert worker.reader[0] in running
    worker.process.stdin.close()
    assert worker.finish(token)[0] == 143
    assert worker.process.wait(timeout=30) == 0


def test_a_jobs_kill_of_its_shells_pid_stops_that_job_and_not_the_worker(worker):
    # Under a login shell with job control the job is a fork of the worker,
    # so its $$ is the worker's: the signal must reach the job instead.
    status, _, _ = worker.run(b"kill $$; sleep 30")
    assert status == 143
    assert worker.run(b"echo after") == (0, b"after\n", b"")


def test_a_job_stopped_and_continued_reports_its_own_exit_status(worker, tmp_path):
    pid_file = tmp_path / "pid"
    token = worker.start(b"exec sh -c 'echo $$ > %s.tmp; mv %s.tmp %s; kill -STOP $$; exit 7'"
                         % ((os.fsencode(pid_file),) * 3))
    wait_until(pid_file.exists, what="the job to write its pid")
    pid = int(pid_file.read_text())

    wait_until(lambda: process_state(pid)[0] == b"T", what="the job to stop itself")
    os.kill(pid, signal.SIGCONT)
    assert worker.finish(token) == (7, b"", b"")


def children(pid):
    """The pids of ``pid``'s live child processes."""
    found = []
    for entry in os.listdir("/proc"):
        state = process_state(entry) if entry.isdigit() else None
        if state is not None and state[0] != b"Z" and state[1] == pid:
            found.append(int(entry))
    return found


def test_the_watcher_is_gone_before_the_end_report_is_written(worker):
    # The end report lets clstr send the next frame: a watcher still
    # reading the frames then could take that frame, or part of it.  The job
    # fills the stdout pipe, so the worker blocks writing its end report
    # there: by then it must have no child left.
    stdout = worker.process.stdout.fileno()
    capacity = fcntl.fcntl(stdout, F_GETPIPE_SZ)
    token = worker.start(b"head -c %d /dev/zero" % capacity)

    def queued():
        return struct.unpack("i", fcntl.ioctl(stdout, termios.FIONREAD, b"\0" * 4))[0]
    wait_until(lambda: queued() == capacity, what="the job to fill the stdout pipe")
    wait_until(lambda: children(worker.process.pid) == worker.reader,
               what="the worker to have reaped the job and its watcher")
    assert worker.finish(token) == (0, b"\0" * capacity, b"")
    assert worker.run(b"echo next") == (0, b"next\n", b"")


def test_under_a_job_control_shell_each_job_is_a_fork_of_the_login_shell(tmp_path):
    if not shutil.which("bash"):
        pytest.skip("no bash")
    started = LocalWorker("bash", str(tmp_path))
    try:
        # A fork: the job's $$ is the worker's, and no shell was started for it.
        status, out, _ = started.run(b'echo "$$"; ps -o ppid= -p "$(sh -c \'echo $PPID\')"')
        assert status == 0
        worker_pid, parent_of_job = out.split()
        assert worker_pid == parent_of_job
    finally:
        started.process.kill()
        started.process.wait()
