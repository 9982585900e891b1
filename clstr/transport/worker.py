"""The worker (``--workers``): one long-lived POSIX sh program per slot that
runs the slot's jobs one at a time, as shell text, and the frames clstr
sends it.

A job costs its node a fork and an exec instead of a whole session (an srun
step, an sshd session).  clstr writes one frame per line on the worker's
stdin and writes the next job only after the previous one's end reports:

- ``j TOKEN 'piece'"$nl"'piece'`` runs a job: the command split at its
  newlines, each piece single-quoted, joined by ``"$nl"`` (a newline the
  worker defines once), so the frame is one line whatever the command
  holds.  The worker reads it with ``IFS= read -r`` and takes it apart by
  ``eval "set -- $frame"``, with no fork.  ``read`` fails on a line that
  has no newline (the worker's stdin closed mid-frame), so a frame cut
  short never runs.
- ``k`` stops the running job.  Any other line is ignored, such as a ``k``
  that came after its job had ended, or the empty line (``ACK_FRAME``) clstr
  answers output with.

Each job runs as the --exec wrapper runs one (transport/wrapper.py): in
``$SHELL -c``, a process of its own (so its ``cd``, ``export`` or ``ulimit``
never reach the next job), in a session of its own (``setsid``: the group
that a stop signals), with ``/dev/null`` as stdin and none of the worker's
fds (fd 3, the frames, is closed for it: a job running ``cat`` or ``ssh``
cannot swallow the next frame).  While it runs, a watcher reads the frames
in its place: ``k``, or EOF (clstr or the connection gone), TERMs the job's
group, and KILLs it 2 s later.  When the job and everything it left in its
group have ended, the worker kills and reaps the watcher first (so that it
can take no byte of the next frame) and only then writes the end report.

The start and end reports are endreport.py's, with the frame's TOKEN (the
run's token and the attempt's number: no report of one job can be taken for
another's), written on stdout *and* stderr: the two streams
travel separately (srun, ssh), so each is cut at its own report, and a
job's last line without a newline is still its own.
"""

from .endreport import report_printf
from .wrapper import shell_quote

STOP_FRAME = b"k\n"
# Sent back for each chunk of a running job's output, and ignored by the
# worker.  srun's I/O to its step is one TCP connection with Nagle's
# algorithm on both ends: the worker's reports and output are several small
# messages in a row, and each after the first waits for an ACK that srun
# delays by 40 ms unless it has something to send back.  So clstr always
# has: a job then costs 2-3 ms through srun instead of 44.
ACK_FRAME = b"\n"


def job_frame(token, command):
    """The line that runs ``command`` (bytes), reporting with ``token``
    (str: hex digits and "-", endreport.ReportReader's): one newline, at
    its end."""
    quoted = b'"$nl"'.join(shell_quote(piece) for piece in command.split(b"\n"))
    return b"j %s %s\n" % (token.encode(), quoted)


def _report(kind, args):
    """Shell text writing one report, with the frame's token in $1, on
    stdout and on stderr."""
    printf = report_printf("%s", kind) + " " + args
    return "%s; %s >&2; " % (printf, printf)


def worker_script():
    """The worker's shell text (run as ``sh -c TEXT``).  It exits when its
    stdin ends."""
    run = "$clstr_setsid \"${SHELL:-sh}\" -c \"$2\" 3<&- & "
    return (
        # No newline in the text itself: through ssh it is one word for the
        # login shell, and csh refuses a newline inside quotes.
        "nl=$(printf \"\\nx\"); nl=${nl%x}; exec 3<&0 </dev/null; "
        "if command -v setsid >/dev/null 2>&1; then clstr_setsid=setsid; else clstr_setsid=; fi; "
        "clstr_job() { " + _report("s", "\"$1\"") + run + "job=$!; "
        "{ while IFS= read -r line; do [ \"$line\" = k ] && break; done; "
        "kill -TERM -$job $job; "
        "for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 -$job || exit; sleep 0.2; done; "
        "kill -KILL -$job $job; } <&3 >/dev/null 2>&1 & "
        "watcher=$!; "
        "wait $job 2>/dev/null; code=$?; t=0.01; "
        "while kill -0 -$job 2>/dev/null; do "
        "sleep $t >/dev/null 2>&1 || sleep 1; "
        "case $t in 0.01) t=0.05;; 0.05) t=0.2;; 0.2) t=0.5;; *) t=1;; esac; done; "
        "kill -KILL $watcher 2>/dev/null; wait $watcher 2>/dev/null; "
        + _report("e%d", "\"$1\" \"$code\"") + "}; "
        "while IFS= read -r frame <&3; do "
        "case $frame in \"j \"*) eval \"set -- $frame\"; clstr_job \"$2\" \"$3\";; esac; "
        "done")


def worker_argv():
    """The worker as argv words after an --exec template (no shell reads
    them as text)."""
    return [b"sh", b"-c", worker_script().encode(), b"clstr-worker"]
