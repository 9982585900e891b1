"""Job input and --resume: where jobs come from, what a job line that cannot
run does, and how a joblog is read back.  Pure tests first, then runs over the
real loopback sshd."""

import os
import subprocess
import sys
import threading

import pytest

from clstr.failures import Failure, Kind
from clstr.jobs import Job, JobFeed, JobInputError, open_job_file
from clstr.nodes import NodePool
from clstr.records import (
    Joblog,
    JoblogError,
    completed_in_joblog,
    failure_report,
    job_key,
    joblog_line,
    torn_tail,
)
from clstr.scheduler import Scheduler
from clstr_run import REPO, all_jobs, clstr, node_args

HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


# -- reading a joblog back (pure) ----------------------------------------------


def _joblog(tmp_path, text):
    path = tmp_path / "joblog"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def test_a_torn_last_joblog_line_is_ignored(tmp_path):
    whole = joblog_line(1, "a", 1.0, 0.5, 3, 0, 0, "one")
    torn = joblog_line(2, "a", 1.0, 0.5, 3, 0, 0, "two")[:-4]  # cut in the command
    assert completed_in_joblog(_joblog(tmp_path, HEADER + whole + torn)) == {
        (1, "one"), ("a", "one")}


def test_a_last_joblog_line_with_too_few_fields_is_ignored(tmp_path):
    whole = joblog_line(1, "a", 1.0, 0.5, 3, 0, 0, "one")
    assert completed_in_joblog(_joblog(tmp_path, HEADER + whole + "2\ta\t1.0\n")) == {
        (1, "one"), ("a", "one")}


def test_a_torn_header_alone_is_an_empty_joblog(tmp_path):
    assert completed_in_joblog(_joblog(tmp_path, "Seq\tHost\tStart")) == set()


def _torn_tails():
    """The last record cut at every byte offset, with and without a newline
    after the cut."""
    record = joblog_line(2, "a", 1.0, 0.5, 3, 0, 0, "two \u00e9t\u00e9")
    data = record.encode()
    for cut in range(len(data)):
        yield data[:cut]
        yield data[:cut] + b"\n"


def test_resume_cuts_a_last_record_torn_anywhere_before_appending(tmp_path):
    whole = joblog_line(1, "a", 1.0, 0.5, 3, 0, 0, "one").encode()
    path = str(tmp_path / "joblog")
    for tail in _torn_tails():
        with open(path, "wb") as log:
            log.write(HEADER.encode() + whole + tail)
        joblog = Joblog(path, resume=True)
        joblog.start()
        joblog.record(2, "a", 1.0, 0.5, 3, 0, 0, "two \u00e9t\u00e9")
        joblog.close()
        # Read back whole: every line a record, job 2 completed, and the
        # torn part gone unless it was a whole line (a command cut short
        # and then a newline is a record of another command).
        done = completed_in_joblog(path)
        assert {(1, "one"), (2, "two \u00e9t\u00e9")} <= done, tail
        with open(path, "rb") as log:
            lines = log.read().split(b"\n")
        assert lines[-1] == b"" and all(line.count(b"\t") == 8 for line in lines[:-1]), tail
        assert len(lines) in (4, 5), tail


def test_a_joblog_header_alone_is_not_torn():
    assert torn_tail(HEADER.encode()) == 0
    assert torn_tail(HEADER.encode()[:-1]) == len(HEADER) - 1


def test_a_malformed_joblog_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    whole = joblog_line(1, "a", 1.0, 0.5, 3, 0, 0, "one")
    path = _joblog(tmp_path, HEADER + whole + "2\ta\t1.0\n" + whole)
    with pytest.raises(JoblogError, match=r"%s:3: not a joblog line" % path):
        completed_in_joblog(path)


def test_joblog_lines_are_split_on_newlines_only(tmp_path):
    # str.splitlines() would also break at CR, form feed, U+2028 ...
    command = "printf 'a\rb\x0cc\x1cd\u2028e\x85f'"
    path = _joblog(tmp_path, HEADER + joblog_line(1, "a", 1.0, 0.5, 3, 0, 0, command))
    job = Job(1, command.encode())
    assert job_key(job) in completed_in_joblog(path)


def test_tabs_backslashes_and_newlines_in_commands_round_trip(tmp_path):
    commands = ["a\tb", "back\\slash", "one\ntwo", "lit\\nnot a newline", "\\t\t\\"]
    text = HEADER + "".join(joblog_line(n, "h", 1.0, 0.5, 0, 0, 0, c)
                            for n, c in enumerate(commands, 1))
    done = completed_in_joblog(_joblog(tmp_path, text))
    for n, command in enumerate(commands, 1):
        assert job_key(Job(n, command.encode())) in done
        assert job_key(Job(n, command.encode(), host="h")) in done
    assert job_key(Job(3, b"one\\ntwo")) not in done


def test_on_each_node_jobs_are_keyed_on_host_not_sequence():
    assert job_key(Job(7, b"uptime", host="node002")) == ("node002", "uptime")
    assert job_key(Job(7, b"uptime")) == (7, "uptime")


# -- job sources (pure) --------------------------------------------------------


@pytest.mark.parametrize("path", ["/dev/null", "empty"])
def test_an_empty_job_file_or_device_is_zero_jobs(tmp_path, path):
    if path == "empty":
        path = str(tmp_path / "empty")
        open(path, "w").close()
    feed = JobFeed(files=[open_job_file(path)])
    assert all_jobs(feed) == [] and feed.total == 0 and feed.empty


def test_a_nul_byte_in_a_job_file_is_found_at_open_with_its_line(tmp_path):
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"echo 1\n\necho 3\x00\necho 4\n")
    with pytest.raises(JobInputError) as raised:
        open_job_file(str(path))
    assert str(raised.value) == "%s:3: job contains a NUL byte" % path


def test_a_nul_byte_past_the_first_read_block_is_found_at_open(tmp_path):
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"echo x\n" * 20000 + b"\x00\n")
    with pytest.raises(JobInputError, match=r":20001: job contains a NUL byte"):
        open_job_file(str(path))


def test_scanning_a_job_file_leaves_it_to_be_read_from_where_it_was(tmp_path):
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"skipped\nfirst\nsecond\n")
    fd = os.open(str(path), os.O_RDONLY)
    os.lseek(fd, len(b"skipped\n"), os.SEEK_SET)
    saved = os.dup(0)
    try:
        os.dup2(fd, 0)
        feed = JobFeed(files=[open_job_file("-")])
        assert [job.command for job in all_jobs(feed)] == [b"first", b"second"]
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(fd)


def test_a_nul_byte_in_a_stream_is_a_rejected_job_that_counts_as_not_completed():
    read_end, write_end = os.pipe()
    os.write(write_end, b"echo 1\n\necho \x003\r\necho 4\n")
    os.close(write_end)
    saved = os.dup(0)
    try:
        os.dup2(read_end, 0)
        feed = JobFeed(files=[open_job_file("-")])
        jobs = all_jobs(feed)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read_end)
    assert [job.command for job in jobs] == [b"echo 1", b"echo 4"]
    assert feed.total == 3
    scheduler = Scheduler(NodePool(["a"]), feed)
    [rejected] = scheduler.not_completed()
    assert rejected.seq == 2 and rejected.rejected == "<stdin>:3: job contains a NUL byte; not run"
    assert failure_report([], [rejected]) == [
        "1 job not completed:",
        "  job 2 'echo \\x003': <stdin>:3: job contains a NUL byte; not run"]


def test_not_completed_lists_jobs_in_order():
    feed = JobFeed([b"1", b"2", b"3"])
    pool = NodePool(["a", "b", "c"])
    scheduler = Scheduler(pool, feed, job_failure="job")
    assignments = [scheduler.next_assignment() for _ in range(2)]
    for job, slot in reversed(assignments):
        scheduler.attempt_finished(job, slot, Failure(Kind.JOB_EXIT, "exit 1"))
    assert [job.seq for job in scheduler.not_completed()] == [1, 2, 3]


def test_a_job_file_that_is_not_utf8_is_bytes_end_to_end(tmp_path):
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"echo caf\xe9\n")
    [job] = all_jobs(JobFeed(files=[open_job_file(str(path))]))
    assert job.command == b"echo caf\xe9"


def test_nodes_and_jobs_both_from_stdin_is_a_usage_error():
    # Nodes would be read to the end first, leaving zero jobs: a silent no-op.
    result = subprocess.run([sys.executable, "-m", "clstr", "-N", "-", "-J", "-"], cwd=REPO,
                            input=b"node001\n", capture_output=True, timeout=60)
    assert result.returncode == 2 and result.stdout == b""
    [line] = result.stderr.decode().splitlines()
    assert line.startswith("clstr: error: ") and "stdin" in line


# -- over the real sshd --------------------------------------------------------


def _joblog_rows(path):
    return [line.split(b"\t") for line in path.read_bytes().split(b"\n")[1:] if line]


def test_on_each_node_resume_runs_only_the_failed_host_whatever_the_node_order(
        cluster, shared_dir, tmp_path):
    joblog = tmp_path / "joblog"
    # The first node to get here fails, once; every later run succeeds.
    command = "mkdir %s/failed-once 2>/dev/null && exit 1; echo ran" % shared_dir
    first = clstr(cluster, *node_args(cluster.nodes(3)), "--joblog", str(joblog), "-E", command)
    assert first.returncode == 1, first.stderr
    assert first.stdout == b"ran\n" * 2
    [failed] = [row[1].decode() for row in _joblog_rows(joblog) if row[6] != b"0"]
    logged = len(_joblog_rows(joblog))

    # The failed host first, then a new one, then the rest: sequence numbers
    # all change meaning.
    others = [name for name in cluster.nodes(3) if name != failed]
    nodes = node_args([failed, "node004"] + others)
    second = clstr(cluster, *nodes, "--joblog", str(joblog), "--resume", "-E", command)
    assert second.returncode == 0, second.stderr
    assert second.stdout == b"ran\n" * 2
    assert sorted(row[1].decode() for row in _joblog_rows(joblog)[logged:]) == sorted(
        [failed, "node004"])

    third = clstr(cluster, *nodes, "--joblog", str(joblog), "--resume", "-E", command)
    assert third.returncode == 0, third.stderr
    assert third.stdout == b""


def test_resume_twice_runs_nothing_with_tabs_backslashes_and_line_breaks_in_commands(
        cluster, tmp_path):
    joblog = tmp_path / "joblog"
    jobs = tmp_path / "jobs.txt"
    jobs.write_bytes(b"echo 'a\tb'\n"
                     b"printf '%s\\n' 'back\\slash \\n'\n"
                     b"echo 'carriage\rreturn'\n"
                     b"echo 'line\xe2\x80\xa8separator'\n"
                     b"echo 'form\x0cfeed'\n")
    args = node_args(cluster.nodes(2)) + ["--joblog", str(joblog), "-J", str(jobs),
                                          "-j", "echo one\necho two"]
    first = clstr(cluster, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(b"\n") == 7
    for _ in range(2):
        again = clstr(cluster, *args, "--resume")
        assert again.returncode == 0, again.stderr
        assert again.stdout == b""


@pytest.mark.parametrize("keep, newline", [(0.5, b""), (0.5, b"\n"), (0.05, b"\n"),
                                           (0.99, b"")])
def test_resume_after_a_torn_last_line_runs_its_job_once_and_the_next_resume_nothing(
        cluster, tmp_path, keep, newline):
    joblog = tmp_path / "joblog"
    args = ["-n", "node001", "--joblog", str(joblog), "-j", "echo one", "-j", "echo two"]
    assert clstr(cluster, *args).returncode == 0
    data = joblog.read_bytes()
    assert data.endswith(b"\techo two\n") or data.endswith(b"\techo one\n")
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    # As a full disk would leave it (and a newline after, to be sure).
    joblog.write_bytes(data[:-len(last) - 1] + last[:int(len(last) * keep)] + newline)
    resumed = clstr(cluster, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == last.rsplit(b"\techo ", 1)[1] + b"\n"
    again = clstr(cluster, *args, "--resume")
    assert (again.returncode, again.stdout) == (0, b""), again.stderr
    rows = [line.split(b"\t") for line in joblog.read_bytes().splitlines()[1:]]
    assert sorted(row[8] for row in rows) == [b"echo one", b"echo two"], rows


def test_resume_rejects_garbage_in_the_middle_of_the_joblog(cluster, tmp_path):
    joblog = tmp_path / "joblog"
    args = ["-n", "node001", "--joblog", str(joblog), "-j", "echo one", "-j", "echo two"]
    assert clstr(cluster, *args).returncode == 0
    header, rest = joblog.read_bytes().split(b"\n", 1)
    joblog.write_bytes(header + b"\ngarbage\n" + rest)
    resumed = clstr(cluster, *args, "--resume")
    assert resumed.returncode == 2
    assert resumed.stdout == b""
    assert resumed.stderr.decode().startswith("clstr: error: --resume: %s:2: not a joblog line"
                                              % joblog)


@pytest.mark.parametrize("source", ["/dev/null", "stdin at /dev/null", "empty file"])
def test_an_empty_job_source_is_zero_jobs_and_exit_0(cluster, tmp_path, source):
    if source == "stdin at /dev/null":
        path = "-"
    elif source == "empty file":
        path = str(tmp_path / "empty")
        open(path, "w").close()
    else:
        path = source
    result = clstr(cluster, "-n", "node001", "-J", path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_an_empty_fifo_that_closes_is_zero_jobs_and_exit_0(cluster, tmp_path):
    fifo = str(tmp_path / "jobs.fifo")
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: open(fifo, "wb").close())  # blocks until read
    writer.start()
    try:
        result = clstr(cluster, "-n", "node001", "-J", fifo, timeout=60)
    finally:
        if writer.is_alive():
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(10)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_an_empty_process_substitution_is_zero_jobs_and_exit_0(cluster):
    script = 'exec "$0" -m clstr --ssh-command "$1" -n node001 --job-file <(true)'
    result = subprocess.run(["bash", "-c", script, sys.executable, cluster.ssh_command],
                            cwd=REPO, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_a_nul_byte_in_a_job_file_stops_before_any_job_starts(cluster, shared_dir, tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_bytes(b"touch %s/one\ntouch %s/two\necho nul\x00here\ntouch %s/four\n"
                     % ((shared_dir.encode(),) * 3))
    result = clstr(cluster, *node_args(cluster.nodes(2)), "-J", str(jobs))
    assert result.returncode == 2
    assert result.stdout == b""
    [line] = result.stderr.decode().splitlines()
    assert line.startswith("clstr: error: %s:3: job contains a NUL byte" % jobs)
    assert os.listdir(shared_dir) == []


def test_a_nul_byte_in_a_job_stream_fails_that_job_only(cluster):
    result = clstr(cluster, *node_args(cluster.nodes(2)), "-J", "-", stdin=None,
                   input=b"echo one\necho t\x00wo\necho three\n")
    assert result.returncode == 1
    assert sorted(result.stdout.splitlines()) == [b"one", b"three"]
    stderr = result.stderr.decode()
    assert "<stdin>:2: job contains a NUL byte; not run" in stderr
    assert "1 of 3 jobs were not completed" in stderr
    assert "Traceback" not in stderr


def test_a_job_file_that_is_not_utf8_runs(cluster, tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_bytes(b"echo caf\xe9\n")
    joblog = tmp_path / "joblog"
    args = ["-n", "node001", "-J", str(jobs), "--joblog", str(joblog)]
    result = clstr(cluster, *args)
    assert (result.returncode, result.stdout) == (0, b"caf\xe9\n"), result.stderr
    again = clstr(cluster, *args, "--resume")
    assert (again.returncode, again.stdout) == (0, b""), again.stderr


def test_a_stream_is_read_ahead_by_bytes_too_and_reading_resumes_as_jobs_are_taken(
        monkeypatch):
    # Ten jobs of 30 KB each, read ahead no further than 64 KiB.
    monkeypatch.setattr("clstr.jobs.MAX_BUFFERED_BYTES", 1 << 16)
    from clstr.loop import EventLoop
    lines = [b"echo %d %s" % (n, b"x" * 30000) for n in range(10)]
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, b"\n".join(lines) + b"\n"),
                                              os.close(write_end)), daemon=True)
    writer.start()
    loop = EventLoop()
    taken, taking = [], []

    def available():
        while taking:
            job = feed.take()
            if job is None:
                return
            taken.append(job)

    saved = os.dup(0)
    try:
        os.dup2(read_end, 0)
        os.close(read_end)
        feed = JobFeed(files=[open_job_file("-")])
        feed.start(loop, available)
        loop.call_later(30, loop.stop)  # bounds both waits below
        loop.run_while(lambda: feed._watched is not None)
        held = feed.waiting()
        assert 3 <= len(held) < 10 and not feed.input_done
        taking.append(True)
        available()
        loop.run_while(lambda: len(taken) < 10)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        feed.close()
        loop.close()
        writer.join(30)
    assert [job.command for job in taken] == lines


def test_a_long_command_is_cut_to_its_first_200_bytes_for_people():
    assert Job(1, b"echo short").brief == "echo short"
    brief = Job(1, b"echo " + b"\xc3\xa9" * 1000).brief
    assert brief.startswith("echo ") and brief.endswith(" [cut: 2005 bytes in all]")
    assert len(brief.encode()) < 250
