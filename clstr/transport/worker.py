"""The worker (``--workers``): one long-lived POSIX sh program per slot that
runs the slot's jobs one at a time, as shell text, and the frames clstr
sends it.

A job costs its node a fork (and an exec, unless the login shell is bash)
instead of a whole session (an srun step, an sshd session).  clstr writes
one frame per line on the worker's stdin and writes the next job only after
the previous one's end reports:

- ``o TOKEN PRELUDE`` comes first, once: the worker's reports carry
  TOKEN (the run's), and each job's process runs PRELUDE
  (prelude.slot_prelude: the job's environment and directory) first.
- ``j NUMBER SEQ COMMAND`` runs a job: COMMAND after the prelude, with
  CLSTR_SEQ=SEQ, its reports' token TOKEN-NUMBER (the attempt's).  The
  prelude and the command are split at their newlines, each piece
  single-quoted, joined by ``"$nl"`` (a newline the worker defines once),
  so a frame is one line whatever they hold.  The worker reads it with
  ``IFS= read -r`` (a byte at a time: hence the prelude once, not in each
  frame) and runs it as a call of the function ``clstr_j`` (``clstr_o``
  for the setup frame), by ``eval``: no fork.
  ``read`` fails on a line that has no newline (the worker's stdin closed
  mid-frame), so a frame cut short never runs.
- Any other line is ignored, such as the empty line (``ACK_FRAME``) clstr
  answers output with.

A running job is stopped by the frames' end: clstr closes the worker's
stdin to stop it (the worker then reports the job's end and exits: the
slot's next job starts a new one), and so does the loss of clstr or of the
connection.  So no frame needs reading while a job runs: in bash, `cat`
copies the frames for the worker's life and signals the worker at their end
(``_READER``); without bash, a watcher forked for each job reads them while
it runs, and the worker kills and reaps it before the job's end report (so
that it can take no byte of the next frame).

Each job runs as a per-job wrapper runs one (transport/wrapper.py): in the
login shell (a fork of the worker when the worker is the login shell and has
job control, i.e. bash; else ``$SHELL -c``), a process of its own (so its
``cd``, ``export`` or ``ulimit`` never reach the next job), in a process
group of its own (job control, or ``setsid``: the group a stop signals),
with ``/dev/null`` as stdin and none of the worker's fds (the frames' pipes
are closed for it: a job running ``cat`` or ``ssh`` cannot swallow the next
frame).  At the frames' end the job's group gets TERM, and KILL 2 s later.
The end report comes once the job and everything it left in its group have
ended.  What a job shares with the next: the worker's ``$$`` (a job's
``kill $$`` stops that job, as under a per-job wrapper), and whatever it
left running outside its group.

The reports are endreport.py's: once ready, the worker writes one start
report (READY_TOKEN) and then an end report per job, with the token
TOKEN-NUMBER (the run's token and the attempt's number: no report of one
job can be taken for another's), on stdout *and* stderr: the two streams travel
separately (srun, ssh), so each is cut at its own report, and a job's last
line without a newline is still its own.
"""

import functools

from .endreport import report_printf
from .wrapper import POSIX_LOGIN_SHELLS, is_posix_login_shell, login_shell_command, shell_quote

# The worker's one start report, once it is ready to run frames: what comes
# before it on either stream (a login's rc files) is nobody's output, and
# from then on a job starts as soon as its frame arrives, so the worker
# writes no start report per job (two fewer writes to carry: a third of a
# job's cost through srun).
READY_TOKEN = "ready"
# Written on stdout instead of the ready report by a worker that cannot
# give a job a process group of its own (no job control, no setsid), as it
# exits: its node's jobs go one session each, where sshd or the --exec
# wrapper make the group.  Not a report, so it is looked for among what
# comes before the ready report, however the stream is cut.
NO_GROUP = b"\x1eclstr-no-process-group\n"
# Sent back for each chunk the worker writes (its ready reports, a job's
# output) but a job's last, and ignored by the worker.  srun's I/O to its
# step is one TCP connection with Nagle's algorithm on both ends: the
# worker's reports and output are several small messages in a row, and each
# after the first waits for an ACK that srun delays by 40 ms unless it has
# something to send back.  So clstr always has: a job then costs 2-3 ms
# through srun instead of 44.
ACK_FRAME = b"\n"


def _one_line(text):
    """``text`` (bytes) as one shell word holding no newline."""
    return b'"$nl"'.join(shell_quote(piece) for piece in text.split(b"\n"))


def setup_frame(token_prefix, prelude):
    """The worker's first line: each job runs ``prelude`` (bytes,
    prelude.slot_prelude's) first, and its reports' token is
    ``token_prefix`` (str: hex digits, endreport.ReportReader's) with "-"
    and the job frame's number after it."""
    return b"o %s %s\n" % (token_prefix.encode(), _one_line(prelude))


def job_frame(number, seq, command):
    """The line that runs ``command`` (bytes) as job ``seq`` (its
    CLSTR_SEQ), reporting as attempt ``number`` (ints): one newline, at its
    end.  Short, since the worker reads it a byte at a time (twice, in
    bash): the rest of a job's prelude came once, in the setup frame."""
    return b"j %d %d %s\n" % (number, seq, _one_line(command))


def _report(kind, args):
    """Shell text writing one report, with the frame's token in $1, on
    stdout and on stderr (fd 4: the worker's own stderr is /dev/null)."""
    printf = report_printf("%s", kind) + " " + args
    return "%s; %s >&4; " % (printf, printf)


# How a job is started.  With job control on (`set -m`: bash turns it on
# without a tty, dash refuses), a background job is a process group of its
# own.  In the login shell (``clstr_fork``) the job is then `eval`ed in a
# fork of the worker: no exec at all, and the job runs in the login shell as
# a per-job wrapper's does.  Measured with 500 `true` jobs: 0.47 ms a job;
# 0.93 ms as `$SHELL -c` under job control (a worker in bash for a dash
# login shell); 1.41 ms as `setsid $SHELL -c` (no job control).  A subshell
# of a job-control shell has job control off, so whatever the job starts
# stays in its group.  Either way the job's process runs the prelude
# ($clstr_pre, its number in $clstr_seq) first (an exit there is the job's),
# then the job (exec keeps the pid; a background process is no group
# leader, so setsid needs no fork).
_FORK = ("( clstr_seq=$2; eval \"$clstr_pre\"; clstr_c=$3; set --; eval \"$clstr_c\" ) "
         "2>&4 3<&- 4>&- 5<&- & ")
_EXEC = ("{ clstr_seq=$2; eval \"$clstr_pre\"; exec $clstr_setsid \"${SHELL:-sh}\" -c \"$3\"; } "
         "2>&4 3<&- 4>&- 5<&- & ")

# What stops a running job (EOF on the frames: clstr stopping it, or
# clstr or the connection gone): TERM to its group, KILL 2 s later if
# anything of it is left.
_KILL_LATER = ("for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 -$job || exit; sleep 0.2; done; "
               "kill -KILL -$job $job; ")

# The frames' reader, in bash: `cat` copies them from fd 3 to the worker's
# pipe (fd 5) for the worker's life, and once they end signals the worker
# (USR1), which is then waiting for its job, or reading.  A process that
# copies in bulk costs a job next to nothing (a shell reading the frames a
# byte at a time, to look for a stop among them, cost a fifth of a job);
# a stop is EOF, so no frame has to be read while a job runs.  Without
# bash, a watcher forked for each job reads fd 3 while the job runs, to its
# EOF (`_WATCH`): a fork more a job.
_READER = ("exec 5< <({ trap '' HUP INT TERM; cat; kill -USR1 $$; } <&3 4>&-); exec 3<&-; "
           "trap clstr_eof USR1; ")
_STOP = ("clstr_eof() { clstr_end=1; if [ -n \"$job\" ]; then clstr_term; fi; }; "
         "clstr_term() { [ -n \"$clstr_killer\" ] && return; kill -TERM -$job $job; "
         "{ " + _KILL_LATER + "} >/dev/null 2>&1 4>&- 5<&- & clstr_killer=$!; }; ")
_WATCH = ("{ while IFS= read -r line; do :; done; "
          "kill -TERM -$job $job; " + _KILL_LATER + "} <&3 >/dev/null 2>&1 4>&- & "
          "clstr_killer=$!; ")


def _job_function(start, watch):
    """Shell text defining ``clstr_j``, which runs a job frame's job as
    ``start`` (_FORK or _EXEC) does, beside ``watch`` (_WATCH, or
    nothing), and writes its end reports."""
    return (
        "clstr_j() { " + start + "job=$!; "
        "case $clstr_sig$clstr_end in ?*) clstr_early;; esac; " + watch +
        "wait $job; code=$?; case $code in 129|1[3-9]?|2??) clstr_reap;; esac; "
        "t=0.01; "
        "while kill -0 -$job; do "
        "sleep $t >/dev/null 2>&1 || sleep 1; "
        "case $t in 0.01) t=0.05;; 0.05) t=0.2;; 0.2) t=0.5;; *) t=1;; esac; done; "
        # The watcher (or a stop's killer) is gone before the end report:
        # once clstr has it, the next frame may come.
        "job=; if [ -n \"$clstr_killer\" ]; then "
        "kill -KILL $clstr_killer; wait $clstr_killer; clstr_killer=; fi; "
        + "%s}; " % _report("e%d", "\"$clstr_tok-$1\" \"$code\""))


def worker_script(inline):
    """The worker's shell text; ``inline``: run by the login shell itself,
    so jobs may run in forks of it.  It exits when its stdin ends."""
    return "clstr_inline=%s; clstr_w=%s; eval \"$clstr_w\"" % (
        "1" if inline else "", shell_quote(_BODY.encode()).decode())


# No newline in the text: through ssh it is one word for the login shell,
# and csh refuses a newline inside quotes.  The worker's own stderr is
# /dev/null: bash's job notices ("Done") and dash's refusal of `set -m` are
# nobody's output.
_BODY = (
    "set -m 2>/dev/null; clstr_jc=; case $- in *m*) clstr_jc=1;; esac; "
    # No job control here (dash) but bash on the node: the worker runs in
    # bash, and each job still in the login shell, by `$SHELL -c`.
    "if [ -z \"$clstr_jc$BASH_VERSION\" ] && command -v bash >/dev/null 2>&1; then "
    "exec bash -c 'clstr_inline=; eval \"$1\"' clstr-worker \"$clstr_w\"; fi; "
    "clstr_fork=; clstr_setsid=; "
    "case :$SHELLOPTS: in *:posix:*) set +o posix; clstr_inline=;; esac; "
    "if [ -n \"$clstr_jc\" ] && [ -n \"$clstr_inline\" ]; then clstr_fork=1; fi; "
    "if [ -z \"$clstr_jc\" ] && command -v setsid >/dev/null 2>&1; then clstr_setsid=setsid; fi; "
    "nl=$(printf \"\\nx\"); nl=${nl%x}; exec 3<&0 </dev/null 4>&2 2>/dev/null; "
    "if [ -z \"$clstr_jc$clstr_setsid\" ]; then "
    + "printf \"%s\"; " % NO_GROUP.decode().replace("\x1e", "\\036").replace("\n", "\\n")
    + "exit 0; fi; "
    # A job's `kill $$` (the worker: its jobs share its $$) stops that
    # job, as it would stop a per-job wrapper's, and not the worker; it
    # may come before the worker has the job's pid.
    "job=; clstr_sig=; clstr_end=; clstr_killer=; clstr_tok=; clstr_pre=; clstr_read=3; "
    "clstr_pass() { if [ -n \"$job\" ]; then kill -$1 -$job; else clstr_sig=$1; fi; }; "
    "for sig in HUP INT TERM; do trap \"clstr_pass $sig\" $sig; done; "
    + _STOP +
    # bash alone can parse the reader (dash cannot, even in a branch not taken).
    "if [ -n \"$BASH_VERSION\" ]; then eval %s; clstr_read=5; fi; "
    % shell_quote(_READER.encode()).decode() +
    # A signal to pass on, or the frames' end, may come before the worker
    # has the job's pid.
    "clstr_early() { if [ -n \"$clstr_sig\" ]; then kill -$clstr_sig -$job; clstr_sig=; fi; "
    "if [ -n \"$clstr_end\" ]; then clstr_term; fi; }; "
    # `wait` returns early (above 128) for a trap (the frames' end, a
    # signal passed on) and, under job control, when the job is stopped
    # (SIGSTOP: 128+19..22; at once while it stays stopped, and bash's
    # `wait -f` too, if it was stopped first): wait until it is gone, then
    # take its status (127: the first answer was its own).  Below 128 it
    # is the job's own.
    "clstr_reap() { while kill -0 $job; do case $code in 14[789]|150) sleep 0.05;; esac; "
    "wait $job; code=$?; done; "
    "wait $job; clstr_c=$?; [ $clstr_c = 127 ] || code=$clstr_c; }; "
    # The function for a job frame (``clstr_j NUMBER SEQ COMMAND``), as
    # this worker starts its jobs.
    "if [ -n \"$clstr_fork\" ]; then " + _job_function(_FORK, "")
    + "elif [ $clstr_read = 5 ]; then " + _job_function(_EXEC, "")
    + "else " + _job_function(_EXEC, _WATCH) + "fi; "
    "clstr_o() { clstr_tok=$1; clstr_pre=$2; }; "
    + _report("s", READY_TOKEN) +
    # A frame is the call of a function: `clstr_` before its first word.
    "while IFS= read -r frame <&$clstr_read; do "
    "case $frame in [jo]\\ *) eval \"clstr_$frame\";; esac; done")


# Started by any shell (the template's, or a login shell not known to be
# POSIX): the worker runs in the login shell ($SHELL) when it is one of the
# POSIX_LOGIN_SHELLS, else in this sh.
_BOOT = ("case ${SHELL##*/} in %s) exec \"$SHELL\" -c \"$1\";; esac; eval \"$2\""
         % "|".join(POSIX_LOGIN_SHELLS))


@functools.lru_cache(maxsize=None)
def worker_argv():
    """The worker as argv words after an --exec template or for a login
    shell not known to be POSIX (no shell reads them as text)."""
    return (b"sh", b"-c", _BOOT.encode(), b"clstr-worker",
            worker_script(inline=True).encode(), worker_script(inline=False).encode())


@functools.lru_cache(maxsize=None)
def worker_command(login_shell):
    """The worker as the command line sshd hands the login shell
    (``login_shell``: its name, None if not known): the worker's text
    itself for a POSIX login shell, which then runs it, else
    ``worker_argv``'s words, each quoted for any shell."""
    if is_posix_login_shell(login_shell):
        return worker_script(inline=True).encode()
    return login_shell_command(worker_argv())
