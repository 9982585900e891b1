"""The remote wrapper every job runs under, on every transport: how the job
is started, stopped and reports its end (endreport.py), as shell text."""

import os

from .endreport import RUN_TOKEN, report_printf


# ssh cannot stop a remote command: killing the local ssh only closes the
# connection and the command runs on (``ssh -tt`` would hang it up, but merges
# stderr into stdout and mangles bytes).  So, like GNU parallel, every job runs
# under a small POSIX sh wrapper.  sshd starts every session's shell in a
# session of its own (setsid), so that session is the job's: the wrapper, its
# watcher and everything the job starts, and nothing else.
# - The job runs with /dev/null as stdin.  A watcher reads the wrapper's
#   stdin, which clstr holds open and never writes to.  EOF means the
#   connection or clstr is gone (Ctrl-C, timeout, clstr killed): the watcher
#   sends TERM to the whole session's process group (ignoring it itself), and
#   KILL 2 s later.
# - The job ends when its shell *and* everything it left in the background
#   have ended, so a background child (`cmd &`) keeps its job, as its held
#   output would with a plain ssh, and the watcher stays armed to stop it.
#   The job's processes are found without polling: the job runs inside a
#   command substitution, whose pipe it holds as fd 8, and the shell reads
#   that pipe until every holder has exited.  So a job is everything it
#   started that still holds fd 8.
# - The watcher must not outlive the wrapper: sshd closes the session's stdin
#   just after the wrapper exits, and a watcher still reading would take that
#   for an early end.  So the wrapper kills it first ($!, its only
#   background job), with KILL: a TERM that arrives before the new watcher
#   has reset the traps it inherited is lost (a quick job on a loaded node),
#   and the watcher holds nothing that needs a clean exit.
# - A process meant to outlive its job lets go of fd 8 (`8>&-`) and leaves
#   the session with `setsid`, so that an early end does not stop it either.
# - HUP, INT or TERM sent to the wrapper's shell (a job's `kill 0`, or
#   `kill $$`: $$ is that shell, as with a plain ssh) end it with 128+N once
#   the job has ended, so there always is an exit status.
# - No exec is added to a job: the wrapper needs only sh builtins (the
#   watcher and the job's subshell are forks of the shell sshd starts, two
#   processes and no exec), which is what makes a job through a ControlMaster
#   cheap.
# The watcher's output goes to /dev/null: sshd keeps a session open while
# anything holds its stdout or stderr.  No single quotes (the wrapper is
# quoted as is), no names that zsh or bash reserve (status, _).
def _report_end(token, exit_with, cleanup=""):
    """Shell text defining ``clstr_end STATUS``: stop the watcher ($!, the
    wrapper's only background job), run ``cleanup``, write the end report,
    exit with ``exit_with``."""
    return ("clstr_end() { kill -KILL $! 2>/dev/null; %s%s \"$1\" >&2; exit %s; }; "
            % (cleanup, report_printf(token, "e%d"), exit_with))


def _watch(token, read_job=None, cleanup=""):
    """The wrapper up to the job: its end, traps, watcher and start report.
    ``read_job``: shell text reading a big job's command from stdin
    (``_read_job``), before the watcher starts reading it; ``cleanup``:
    shell text removing what that left on the node, run as the job ends."""
    start = report_printf(token, "s") + " >&2; "
    watcher = ("exec 3<&0 </dev/null 4>&1; "
               "{ while read -r line; do :; done; trap \"\" TERM; kill -TERM 0; "
               "sleep 2; %skill -KILL 0; } <&3 >/dev/null 2>&1 4>&- & "
               "exec 3<&-; " % cleanup)
    head = (_report_end(token, "$1", cleanup)
            + "trap \"clstr_end 129\" HUP; trap \"clstr_end 130\" INT; "
            "trap \"clstr_end 143\" TERM; ")
    if read_job is None:
        return head + watcher + start
    # Started first: a command of megabytes may take a while to arrive, and
    # a connection lost meanwhile is lost under a started job.
    return head + start + read_job + watcher


# A command longer than this, quoted, goes on the attempt's stdin instead of
# the command line: Linux takes at most 128 KiB in one argument
# (MAX_ARG_STRLEN), and the command line sshd hands the login shell is one,
# as is the job's word after an --exec template; a mux message carries at
# most 256 KiB.  Shorter commands keep the command line: nothing is added
# to a small job.
STDIN_ABOVE = 100 * 1024


def command_on_stdin(command):
    """Whether ``command`` (bytes) goes on stdin (quoting makes each ' four
    bytes)."""
    return len(command) + 3 * command.count(b"'") + 2 > STDIN_ABOVE


def stdin_payload(command):
    """What an attempt writes first on the wrapper's stdin: ``LEN\\n`` and
    the command, or None when the command travels on the command line."""
    if not command_on_stdin(command):
        return None
    return b"%d\n" % len(command) + command


# The wrapper's first words for a command that comes on stdin: `read` takes
# the length line (a shell reads a pipe a byte at a time, so as to take no
# more), `head -c` the command, into a private file (mktemp: 0600), whose
# length says whether all of it arrived; then ``then``.  Only after that
# does the watcher read stdin, where nothing comes but the EOF that stops
# the job.  A node that cannot store it ($TMPDIR missing, a full disk, stdin
# closed early) says how many bytes it stored in an undelivered report
# (endreport.py) and ends without running it.
def _read_job(token, then):
    return (
        "clstr_f=; clstr_n=; clstr_got=0; "
        "if read -r clstr_n && clstr_f=$(mktemp 2>/dev/null); then "
        "head -c \"$clstr_n\" >\"$clstr_f\" 2>/dev/null; clstr_got=$(wc -c <\"$clstr_f\"); fi; "
        "if [ \"$clstr_got\" -eq \"$clstr_n\" ] 2>/dev/null; then %s else "
        "rm -f \"$clstr_f\"; %s \"$clstr_got\" >&2 2>/dev/null; exit 0; fi; "
        % (then, report_printf(token, "u%d")))


# The file's removal, for forms whose job runs it as a script.
_REMOVE_JOB_FILE = "rm -f \"$clstr_f\"; "


_JOB_START = "held=$( { "
# The prelude, as the wrapper's $1, run in the job's subshell: an exit there
# (a --workdir that cannot be entered) is the job's.
_EVAL_PRELUDE = "eval \"$1\"; "
_JOB_END = "; } 8>&1 >&4 4>&- ); "
_FINISH = "clstr_end $?"

# Login shells that run the wrapper themselves: the job then runs in the
# login shell sshd started (as with a plain `ssh host cmd`: same $0, same
# $$, same rc files), by `eval` in a forked subshell.  For any other shell
# (csh, fish...) the wrapper runs under `exec sh -c`, which every shell can
# parse, and the job under `$SHELL -c`.
POSIX_LOGIN_SHELLS = ("sh", "dash", "bash")

# Asked of a host once (transport/masters.py) to learn whether its login shell is one
# of those: $0 is the name sshd ran the shell under, and only a POSIX shell
# can do the arithmetic (csh and fish fail, and so print no "42").
LOGIN_SHELL_PROBE = b'echo "$0" $((6*7))'


def login_shell_from_probe(code, output):
    """The login shell's name from LOGIN_SHELL_PROBE's exit status and
    stdout, or None if the answer is not one only a POSIX shell gives."""
    words = output.split()
    if code == 0 and len(words) == 2 and words[1] == b"42":
        return os.fsdecode(words[0])
    return None


# The wrapper for transports whose command does not get a session of its own
# (--exec: srun, docker exec): it makes one for the job with `setsid` and
# keeps to that process group, polling for it to empty, from 10 ms up to 1 s.
# Without setsid on the node, only the job's own shell can be stopped.
# $1 is the job's prelude (transport/prelude.py), $2 its command; the job runs
# in $SHELL, in a process that has run the prelude.  It exits 0 once its end
# report is written, so the transport adds no words of its own about the
# job's status (srun's "task 0: Exited with exit code N"); `wait` is
# silenced so that a job stopped by clstr leaves no "Terminated" in its
# stderr.
def exec_wrapper(token=RUN_TOKEN, on_stdin=False):
    """The --exec wrapper's shell text, reporting with ``token``.  The job's
    prelude is $1; its command $2, or (``on_stdin``) comes on stdin and runs
    from a file."""
    cleanup, read_job, job = "", "", "-c \"$2\""
    if on_stdin:
        cleanup, read_job, job = _REMOVE_JOB_FILE, _read_job(token, ":;"), "\"$clstr_f\""
    # The prelude runs in the job's process, before it becomes the job's
    # shell: exec keeps the pid (so $! is the job), and a background
    # process is no group leader, so setsid needs no fork of its own.
    run = "{ eval \"$1\"; exec $clstr_setsid \"${SHELL:-sh}\" %s; } 3<&- & " % job
    return (
        "clstr_end() { kill $watcher 2>/dev/null; wait $watcher 2>/dev/null; "
        "%s%s \"$1\" >&2; exit 0; }; " % (cleanup, report_printf(token, "e%d"))
        + report_printf(token, "s") + " >&2; " + read_job
        + "exec 3<&0 </dev/null; "
        "if command -v setsid >/dev/null 2>&1; then clstr_setsid=setsid; else clstr_setsid=; fi; "
        + run + "job=$!; "
        "{ while read -r line; do :; done; kill -TERM -$job $job; "
        "for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 -$job || exit; sleep 0.2; done; "
        "kill -KILL -$job $job; } <&3 >/dev/null 2>&1 & "
        "watcher=$!; exec 3<&-; "
        "wait $job 2>/dev/null; code=$?; t=0.01; "
        "while kill -0 -$job 2>/dev/null; do "
        "sleep $t >/dev/null 2>&1 || sleep 1; "
        "case $t in 0.01) t=0.05;; 0.05) t=0.2;; 0.2) t=0.5;; *) t=1;; esac; done; "
        "clstr_end $code")


def shell_quote(word):
    """``word`` (bytes) as one POSIX shell word, whatever bytes it holds."""
    return b"'" + word.replace(b"'", b"'\\''") + b"'"


def wrapper_argv(command, token=RUN_TOKEN, prelude=b""):
    """The wrapper as separate argv words for a transport that runs a program
    without a login shell in between: ``sh -c WRAPPER clstr-job PRELUDE
    COMMAND``.  ``command`` and ``prelude`` (transport/prelude.py) are bytes
    and need no quoting here; a big command is left out
    (``stdin_payload``)."""
    if command_on_stdin(command):
        return [b"sh", b"-c", exec_wrapper(token, on_stdin=True).encode(), b"clstr-job",
                prelude]
    return [b"sh", b"-c", exec_wrapper(token).encode(), b"clstr-job", prelude, command]


def login_shell_command(words):
    """The command line (bytes) for sshd to hand the login shell, running
    ``words`` (bytes, e.g. worker.worker_argv) as argv: each word quoted,
    as the non-POSIX form of ``wrapped_command`` quotes its wrapper, so
    every login shell passes them on untouched."""
    return b"exec " + b" ".join(shell_quote(word) for word in words)


def is_posix_login_shell(name):
    """Whether the login shell ``name`` (a path or sshd's argv[0]) runs the
    wrapper itself."""
    return bool(name) and os.path.basename(name) in POSIX_LOGIN_SHELLS


def wrapped_command(command, login_shell=None, token=RUN_TOKEN, prelude=b""):
    """The remote command line (bytes) that runs ``command`` (bytes) under
    the wrapper, for sshd to hand to the user's login shell, after
    ``prelude`` (bytes, transport/prelude.py), in the job's process.  If
    the caller knows that shell (``login_shell``) and it is one of
    POSIX_LOGIN_SHELLS, the login shell runs the wrapper, the prelude and
    the job itself; otherwise it execs ``sh`` for the wrapper and the
    prelude (its $1), and the job runs in ``$SHELL -c``.  A command too big
    for a command line (``command_on_stdin``) is left out: the wrapper reads
    it from stdin (``stdin_payload``), and the job runs by `eval`, or as the
    file ``$SHELL`` is given (never ``-c``: argv again)."""
    inline = is_posix_login_shell(login_shell)
    if command_on_stdin(command):
        if inline:
            # Read into the shell at once, so no file is left on the node.
            read_job = _read_job(token, "clstr_job=$(cat \"$clstr_f\"); rm -f \"$clstr_f\";")
            return ((_watch(token, read_job) + _JOB_START).encode() + prelude
                    + ("eval \"$clstr_job\"" + _JOB_END + _FINISH).encode())
        job = _EVAL_PRELUDE + "login=${SHELL:-sh}; \"$login\" \"$clstr_f\""
        wrapper = (_watch(token, _read_job(token, ":;"), _REMOVE_JOB_FILE) + _JOB_START + job
                   + _JOB_END + _FINISH)
        return b"exec sh -c '" + wrapper.encode() + b"' clstr-job " + shell_quote(prelude)
    if inline:
        job = prelude + b"eval " + shell_quote(command)
        return (_watch(token) + _JOB_START).encode() + job + (_JOB_END + _FINISH).encode()
    # $0 is the shell's name, as sshd gives it to a login shell.
    job = _EVAL_PRELUDE + "login=${SHELL:-sh}; \"$login\" -c \"$2\" \"${login##*/}\""
    wrapper = _watch(token) + _JOB_START + job + _JOB_END + _FINISH
    return (b"exec sh -c '" + wrapper.encode() + b"' clstr-job " + shell_quote(prelude) + b" "
            + shell_quote(command))
