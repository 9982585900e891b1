"""The --status line: on the controlling terminal when stderr is not one,
whole fields fitted to the width, a summary at the end (issue 13)."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from clstr.status import fit_fields, progress_fields, summary_fields
from clstr_run import REPO, node_args, read_terminal


def test_fitting_drops_whole_fields_never_letters():
    fields = ["110 of 556 jobs complete, 176 of 176 nodes running jobs.", "52.0 jobs/min",
              "ETA 8m58s", "2 nodes retired"]
    assert fit_fields(fields, 200) == "  ".join(fields)
    assert fit_fields(fields, len(fields[0]) + 2 + len(fields[1])) == "  ".join(fields[:2])
    assert fit_fields(fields, len(fields[0]) + 5) == fields[0]
    # Only a first field wider than the whole terminal is cut.
    assert fit_fields(fields, 20) == fields[0][:20]


def test_summary_has_no_eta_and_says_how_long():
    fields = summary_fields(40, 40, 75.0, 1)
    assert fields[0] == "40 of 40 jobs complete in 1m15s."
    assert not any("ETA" in field for field in fields)
    assert "1 node retired" in fields


def test_progress_shows_an_eta_while_running():
    fields = progress_fields(10, 40, 4, 4, True, 10.0, 0)
    assert fields[0] == "10 of 40 jobs complete, 4 of 4 nodes running jobs."
    assert fields[-1] == "ETA 30s"


def _as_controlling_terminal(slave):
    def become():
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    return become


def test_status_is_drawn_on_the_controlling_terminal_when_stderr_is_redirected(
        cluster, tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    log = tmp_path / "stderr.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "clstr", "--ssh-command", cluster.ssh_command, "--status",
             *node_args(cluster.nodes(2)), *(["-j", "echo x"] * 6)],
            # A person at the terminal who sent stderr to a file: stdin is
            # still the terminal, which keeps it open while clstr runs.
            cwd=REPO, stdin=slave, stdout=subprocess.PIPE, stderr=stderr,
            preexec_fn=_as_controlling_terminal(slave))
    os.close(slave)
    drawn = read_terminal(master)
    assert process.wait(timeout=60) == 0
    assert process.stdout.read() == b"x\n" * 6
    assert b"jobs complete" not in log.read_bytes()
    frames = [frame for frame in drawn.split(b"\r\x1b[2K") if frame]
    assert frames and frames[-1].startswith(b"6 of 6 jobs complete in "), drawn
    assert b"ETA" not in frames[-1]
    assert all(len(frame.rstrip(b"\r\n")) <= 59 for frame in frames), frames


def test_a_regular_job_files_count_is_known_before_it_is_read(tmp_path):
    from clstr.jobs import JOB_INPUT_READ_SIZE, JobFeed, open_job_file
    jobs = tmp_path / "jobs.txt"
    lines = ["echo job %d" % n for n in range(20000)]
    lines[5] = "   "  # blank lines are no jobs
    jobs.write_text("\n".join(lines))  # no final newline: the last line counts
    assert jobs.stat().st_size > 2 * JOB_INPUT_READ_SIZE  # far more than one read
    feed = JobFeed([b"echo first"], [open_job_file(str(jobs))])
    assert feed.expected_total == (20000, True)
    assert feed.take().command == b"echo first"
    assert feed.take() is not None
    assert feed.total < 20000
    assert feed.expected_total == (20000, True)
