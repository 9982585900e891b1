"""The job's prelude: shell text the remote wrapper runs just before each
job, on every transport, in the job's own process, so that the job starts
with its own facts in its environment (``CLSTR_SEQ``, ``CLSTR_SLOT``,
``CLSTR_HOST``), the ``--env`` variables, and in ``--workdir``.

The prelude is POSIX sh text, run by the wrapper's sh (never by a login
shell that cannot read it, such as csh or fish: their jobs get the
environment and the directory from that sh).  Where the login shell is not
known, the prelude reaches sh as one single-quoted word that the login
shell reads first, so it holds none of the bytes that quoting cannot carry
through every login shell: a newline (csh refuses one inside quotes), ``!``
(tcsh expands history even inside quotes) and a backslash (fish reads
``\\\\`` and ``\\'`` inside quotes).  A value holding any of them gets it
from a variable the prelude defines first with printf's octal escapes, at
the cost of one fork, paid only by such values.
"""

import re

# The name of a variable a shell can export.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# The most the prelude may take on a command line: a job's command goes on
# stdin above wrapper.STDIN_ABOVE (100 KiB) of Linux's 128 KiB for one
# argument, which leaves this, and room for the wrapper, to the prelude.
PRELUDE_MAX = 16 * 1024

# What the prelude exits with when --workdir cannot be entered: the job's
# status then, as coreutils' env, nice and timeout exit 125 when they fail
# themselves before running their command.
WORKDIR_FAILED = 125

# Bytes no prelude holds, and the variable each comes from instead.
_SPECIAL = {b"!": b"clstr_bang", b"\\": b"clstr_bs", b"\n": b"clstr_nl"}
_SPECIAL_BYTES = re.compile(rb"([!\\\n])")
# printf's octal escapes hold no special byte themselves; the x keeps the
# newline from being cut off by the command substitution.
_DEFINE_SPECIAL = (b"clstr_sp=$(printf '\\041\\134\\nx'); clstr_bang=${clstr_sp%???}; "
                   b"clstr_sp=${clstr_sp#?}; clstr_bs=${clstr_sp%??}; clstr_nl=${clstr_sp#?}; "
                   b"clstr_nl=${clstr_nl%x}; ")
# What the node's shell is to expand: ~ or ~alice, alone or with the slash
# after it (a quoted slash would make the rest part of the user's name).
_TILDE = re.compile(rb"~(?:[A-Za-z0-9._][A-Za-z0-9._-]*)?(?:/|\Z)")


def is_env_name(name):
    """Whether ``name`` (str) can be exported by --env."""
    return bool(_ENV_NAME.match(name))


def _word(value):
    """``value`` (bytes) as sh text for one word, with none of _SPECIAL's
    bytes: single-quoted pieces joined by the variables holding them, a '
    as "'" (the usual '\\'' puts a backslash before a quote, which fish
    takes for an escaped quote)."""
    pieces = []
    for piece in _SPECIAL_BYTES.split(value):
        if piece in _SPECIAL:
            pieces.append(b'"$' + _SPECIAL[piece] + b'"')
        elif piece:
            pieces.append(b"'" + piece.replace(b"'", b"'\"'\"'") + b"'")
    return b"".join(pieces) or b"''"


def _directory(workdir):
    """``workdir`` (bytes) as sh text for one word: a leading ``~`` or
    ``~user`` left for the node's shell to expand, a relative path made
    ./relative (so that $CDPATH never moves it, and a leading - is no
    option)."""
    tilde = _TILDE.match(workdir)
    if tilde:
        return tilde.group() + (_word(workdir[tilde.end():]) if tilde.end() < len(workdir)
                                else b"")
    if not workdir.startswith(b"/"):
        workdir = b"./" + workdir
    return _word(workdir)


# What a worker's job (worker.py) reads its number from: the worker's slot
# prelude is sent once, and each job's frame sets this variable.
WORKER_SEQ = b'"$clstr_seq"'


def job_prelude(seq, slot_number, host, env=(), workdir=None):
    """The prelude (bytes, sh text ending in "; ") for job ``seq`` (an int,
    or WORKER_SEQ) on slot ``slot_number`` of ``host`` (str): it exports
    ``env`` ((name, value)
    bytes pairs), then CLSTR_SEQ, CLSTR_SLOT and CLSTR_HOST, and enters
    ``workdir`` (bytes or None), making it first if it does not exist.  A
    directory it cannot make or enter ends the job's process with
    WORKDIR_FAILED, saying so on stderr: the job's own failure."""
    host = host.encode()
    exports = [b"%s=%s" % (name, _word(value)) for name, value in env]
    exports += [b"CLSTR_SEQ=" + (seq if seq == WORKER_SEQ else b"%d" % seq),
                b"CLSTR_SLOT=%d" % slot_number,
                b"CLSTR_HOST=" + _word(host)]
    text = b"export " + b" ".join(exports) + b"; "
    if workdir is not None:
        text += _enter(workdir, b"exit %d" % WORKDIR_FAILED)
    values = [value for _, value in env] + [host, workdir or b""]
    if any(_SPECIAL_BYTES.search(value) for value in values):
        text = _DEFINE_SPECIAL + text
    return text


def _enter(workdir, failed):
    """sh text entering ``workdir``, made first if missing, or saying why
    not and running ``failed`` (sh text)."""
    # cd first: an existing directory costs no mkdir (an exec).  Only the
    # first cd is silenced: mkdir's, or the second cd's, reason is shown,
    # followed by clstr's line.
    where = _directory(workdir)
    return (b"cd %s 2>/dev/null || { mkdir -p %s && cd %s; } || "
            b"{ printf 'clstr: --workdir %%s could not be entered%s' %s >&2; %s; }; "
            % (where, where, where, b"\\n", _word(workdir), failed))


def enter_workdir(workdir, failed):
    """sh text (bytes) entering ``workdir`` (bytes, or None: nothing) as a
    job's prelude does, for a program of clstr's own that is no job (a
    --send or --return copy, filecopy.py): it runs ``failed`` (sh text)
    when the directory cannot be made or entered."""
    if workdir is None:
        return b""
    text = _enter(workdir, failed)
    if _SPECIAL_BYTES.search(workdir):
        text = _DEFINE_SPECIAL + text
    return text


def attempt_prelude(plan, job, slot):
    """The prelude of ``job``'s attempt on ``slot`` (nodes.Slot) under
    ``plan``: the slot number is its host's slot count from 1, as GNU
    parallel's {%} counts job slots from 1 (a host's slots are its own:
    two jobs running at once on a host never share a number)."""
    return job_prelude(job.seq, slot.index + 1, slot.host.name, plan.env, plan.workdir)


def slot_prelude(plan, slot):
    """The prelude every job of ``slot``'s worker runs under ``plan``, as
    attempt_prelude's, its number taken from WORKER_SEQ."""
    return job_prelude(WORKER_SEQ, slot.index + 1, slot.host.name, plan.env, plan.workdir)
