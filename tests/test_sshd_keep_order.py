"""-k/--keep-order over the real ssh client and loopback sshd: output in job
order, byte for byte as GNU parallel -k prints the same jobs, with jobs that
finish in reverse, with --group, with a job that fails and runs again, with a
job source that streams, with --resume, and with more output held than
memory holds.

Jobs finish in reverse order by waiting for the next job's flag file (never
by sleeping and hoping): job i waits for done.(i+1), so every job must run
at once (slots >= jobs).  A job waits at most a minute for its flag: longer
than a test waits for a line, so a line held too long fails the test."""

import os
import subprocess

import pytest

from clstr_run import clstr, joblog_rows, read_lines, require_program, start_clstr, wait_until

WAIT = "i=0; while [ ! -e %s ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; "


def reverse_jobs(directory, count, body):
    """Job lines 1..count: job i waits until job i+1 is done, then runs
    ``body % {"i": i}`` and marks itself done."""
    lines = []
    for i in range(1, count + 1):
        wait = WAIT % os.path.join(directory, "done.%d" % (i + 1)) if i < count else ""
        lines.append(wait + body % {"i": i} + "; touch %s\n"
                     % os.path.join(directory, "done.%d" % i))
    return "".join(lines)


# Lines on stdout and stderr, one job with no output at all and one with
# 40000 lines (more than a pipe holds: held while it runs).
BODY = ('if [ %(i)d = 3 ]; then :; elif [ %(i)d = 5 ]; then seq 1 40000; '
        'else echo "job %(i)d says hello"; echo "job %(i)d to stderr" >&2; '
        'printf "job %(i)d again\\n"; fi')


def gnu_parallel(tmp_path, jobs, *options):
    """GNU parallel run here (no -S: the output is what is compared), with a
    HOME of its own so that it writes nothing of the user's."""
    parallel = require_program("parallel")
    home = tmp_path / "parallel-home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home))
    return subprocess.run([parallel, "--will-cite", *options], input=jobs.encode(),
                          capture_output=True, env=env, timeout=120)


def clstr_on(cluster, jobs, *args):
    """clstr with ``args``, reading the job lines ``jobs`` from stdin."""
    return clstr(cluster, *args, "-J", "-", stdin=None, input=jobs.encode())


def flags_dir(shared_dir, name):
    path = os.path.join(shared_dir, name)
    os.mkdir(path)
    os.chmod(path, 0o1777)
    return path


def test_keep_order_prints_what_gnu_parallel_k_prints_for_jobs_finishing_in_reverse(
        cluster, shared_dir, tmp_path):
    count = 8
    ours = clstr_on(cluster, reverse_jobs(flags_dir(shared_dir, "clstr"), count, BODY),
                    "-n", "4/node001", "4/node002", "-k", "--joblog", str(tmp_path / "log"))
    assert ours.returncode == 0, ours.stderr
    theirs = gnu_parallel(tmp_path, reverse_jobs(flags_dir(shared_dir, "parallel"), count, BODY),
                          "-k", "-j", str(count))
    assert theirs.returncode == 0, theirs.stderr
    assert ours.stdout == theirs.stdout
    assert ours.stderr == theirs.stderr
    assert ours.stdout.startswith(b"job 1 says hello\njob 1 again\njob 2 says hello\n")
    # They did finish out of order: the joblog has a line per job as clstr
    # heard it end.  (Neighbours may swap: job i ends just after it made the
    # flag job i-1 waits for, so only the far ends are sure.)
    ended = [int(row[0]) for row in joblog_rows(tmp_path / "log")]
    assert sorted(ended) == list(range(1, count + 1))
    assert ended.index(count) < ended.index(1), ended


def test_keep_order_with_group_prints_what_gnu_parallel_k_prints(cluster, shared_dir, tmp_path):
    count = 6
    ours = clstr_on(cluster, reverse_jobs(flags_dir(shared_dir, "clstr"), count, BODY),
                    "-n", "6/node001", "-k", "--group")
    assert ours.returncode == 0, ours.stderr
    theirs = gnu_parallel(tmp_path, reverse_jobs(flags_dir(shared_dir, "parallel"), count, BODY),
                          "-k", "-j", str(count))
    assert theirs.returncode == 0, theirs.stderr
    assert (ours.stdout, ours.stderr) == (theirs.stdout, theirs.stderr)


@pytest.mark.parametrize("mode", [[], ["--group"]], ids=["lines", "group"])
def test_keep_order_with_tag_keeps_tagged_lines_in_job_order(cluster, shared_dir, mode):
    ours = clstr_on(cluster, reverse_jobs(shared_dir, 3, 'echo "job %(i)d"; echo "job %(i)d end"'),
                    "-n", "3/node001", "-k", "--tag", *mode)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == b"".join(b"node001: job %d\nnode001: job %d end\n" % (i, i)
                                   for i in (1, 2, 3))


def test_a_job_that_fails_and_runs_again_keeps_its_place(cluster, shared_dir):
    # Job 2's first attempt fails (exit 3: its node is retired, the default)
    # after a line that line mode passes on, as without -k; the rerun's
    # lines follow it, in job 2's place, while job 1 waits for the rerun.
    first_try = os.path.join(shared_dir, "first-try")
    jobs = ["-j", WAIT % os.path.join(shared_dir, "done.2") + "echo one",
            "-j", 'if [ ! -e {0} ]; then touch {0}; echo "two, first try"; exit 3; fi; '
                  'echo "two, again"; touch {1}'.format(first_try,
                                                        os.path.join(shared_dir, "done.2")),
            "-j", "echo three"]
    for mode in ([], ["--group"]):
        for name in ("first-try", "done.2"):
            if os.path.exists(os.path.join(shared_dir, name)):
                os.unlink(os.path.join(shared_dir, name))
        ours = clstr(cluster, "-n", "2/envnode001", "2/envnode002", "-k", *mode, *jobs)
        assert ours.returncode == 0, ours.stderr
        dropped = b"" if mode else b"two, first try\n"
        assert ours.stdout == b"one\n" + dropped + b"two, again\nthree\n", mode


def test_a_job_given_up_passes_the_turn_on(cluster, shared_dir):
    # Job 2 fails for good (--job-failure job): job 3's lines show as they
    # come, while it waits for the test.
    read = os.path.join(shared_dir, "read")
    process = start_clstr(cluster, "-n", "3/node001", "-k", "--job-failure", "job",
                          "-j", "echo one", "-j", "echo two; exit 3",
                          "-j", "echo three; %s echo three end" % (WAIT % read))
    try:
        assert read_lines(process.stdout, 3) == [b"one\n", b"two\n", b"three\n"]
        open(read, "w").close()
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1
    assert out == b"three end\n"


def test_what_waits_behind_a_job_that_never_completes_comes_before_the_report(
        cluster, shared_dir):
    # Job 1 fails on both nodes (retiring them: no node is left), after job
    # 2 has ended: job 2's line, held until then, comes before the report.
    done = os.path.join(shared_dir, "done.2")
    process = start_clstr(cluster, "-n", "envnode001", "envnode002", "-k",
                          "-j", WAIT % done + "exit 3", "-j", "echo two; touch %s" % done,
                          stderr=subprocess.STDOUT)
    try:
        out, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1
    lines = out.splitlines()
    assert lines[0] == b"two" and lines[1] == b"clstr: 2 nodes retired:", lines


def test_streamed_jobs_wait_for_every_earlier_job_and_no_longer(cluster, shared_dir):
    # Jobs come from a pipe.  Job 1 prints a line and waits; job 2 ends at
    # once; job 3 comes after job 2 has ended.  Job 1's line shows as it
    # comes, job 2's and 3's only once job 1 has ended, and at once then:
    # job 4 waits for the test to have read them.
    go, read = os.path.join(shared_dir, "go"), os.path.join(shared_dir, "read")
    process = start_clstr(cluster, "-n", "4/node001", "-k", "--joblog",
                          os.path.join(shared_dir, "log"), "-J", "-",
                          stdin=subprocess.PIPE)
    try:
        process.stdin.write(("echo one; %s echo one end\necho two\n" % (WAIT % go)).encode())
        process.stdin.flush()
        assert read_lines(process.stdout, 1) == [b"one\n"]
        wait_until(lambda: [row[0] for row in joblog_rows(os.path.join(shared_dir, "log"))]
                   == [b"2"], what="job 2 ended")
        process.stdin.write(("echo three\n%s echo four\n" % (WAIT % read)).encode())
        process.stdin.close()
        open(go, "w").close()
        assert read_lines(process.stdout, 3) == [b"one end\n", b"two\n", b"three\n"]
        open(read, "w").close()
        process.stdin = None  # closed above: communicate() would flush it
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out == b"four\n"


def test_jobs_skipped_by_resume_hold_nothing_up(cluster, shared_dir, tmp_path):
    # Jobs 2 and 4 completed in an earlier run; job 3's line must show as
    # soon as job 1 has ended, while job 5 still waits for the test.
    go, read = os.path.join(shared_dir, "go"), os.path.join(shared_dir, "read")
    commands = ["%s echo one" % (WAIT % go), "echo two", "echo three", "echo four",
                "%s echo five" % (WAIT % read)]
    joblog = tmp_path / "joblog"
    joblog.write_text("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\t"
                      "Command\n" + "".join("%d\tnode001\t1.0\t0.1\t0\t4\t0\t0\t%s\n"
                                            % (seq, commands[seq - 1]) for seq in (2, 4)))
    jobs = tmp_path / "jobs"
    jobs.write_text("".join(command + "\n" for command in commands))
    process = start_clstr(cluster, "-n", "3/node001", "-k", "--joblog", str(joblog),
                          "--resume", "-J", str(jobs))
    try:
        open(go, "w").close()
        assert read_lines(process.stdout, 2) == [b"one\n", b"three\n"]
        open(read, "w").close()
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out == b"five\n"


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def spill_files_open(pid, directory):
    """clstr's open files in ``directory`` (unlinked temporary files)."""
    found = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith(directory + "/"):
            found.append(target)
    return found


def test_output_held_past_memory_waits_on_disk_in_bounded_memory(cluster, shared_dir, tmp_path):
    # Jobs 2..9 write 3.8 MB each (30 MB in all) and end while job 1 waits
    # for the test: all of it is held, on disk in clstr's $TMPDIR, while
    # clstr's memory stays far below it.  Then job 1 ends, and every byte
    # comes out in job order.
    go = os.path.join(shared_dir, "go")
    count = 9
    spill = tmp_path / "spill"
    spill.mkdir()
    body = "yes 'job %d: a line of output to hold' | head -n 120000"
    jobs = ["-j", WAIT % go + "echo one"]
    for i in range(2, count + 1):
        jobs += ["-j", body % i]
    log = str(tmp_path / "log")
    process = start_clstr(cluster, "-n", "%d/node001" % count, "-k", "--joblog", log, *jobs,
                          env=dict(os.environ, TMPDIR=str(spill)))
    try:
        wait_until(lambda: len(joblog_rows(log)) == count - 1, timeout=120,
                   what="jobs 2..9 ended")
        # The last job's end is read just after its joblog line is written:
        # then its own spill file goes, its bytes on the tape with the rest.
        # One tape (30 MB is less than TAPE_BYTES) on disk: one file, not
        # one per job.
        def held_on_disk():
            files = spill_files_open(process.pid, str(spill))
            return files if len(files) == 1 else None

        held_files = wait_until(held_on_disk, what="one spill file")
        held_rss = rss_kib(process.pid)
        open(go, "w").close()
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    expected = b"one\n" + b"".join(
        b"job %d: a line of output to hold\n" % i * 120000 for i in range(2, count + 1))
    assert len(expected) > 30 * 1000 * 1000
    assert out == expected
    assert held_files[0].endswith(" (deleted)"), held_files
    # clstr's memory stays well under what it held (19 MiB here).
    assert held_rss < 30 * 1024, held_rss

