"""One file copied to or from a node by a small program of clstr's own
(``--send``: sendfiles.py, ``--return``: returnfiles.py), over the
connection the node's jobs use (transport ``remote_process``: its master,
if any, so a copy costs no login).

The copy is not a job: it runs under no wrapper (the wrapper takes EOF on
stdin as "stop", and a sent file *is* the stdin), but it speaks the
wrapper's language (endreport.py): a start report, then an end report with
status 0 once the file was stored whole, or 1 after saying why on stderr.
So ``failures.judge_copy`` tells the node's refusal (a full disk, a
directory it may not write, a missing file: ``Kind.FILE``, in the node's
words) from a connection lost mid-copy (started, no end report) and from a
node that could not be reached, exactly as for a job.
"""

from .failures import judge_copy, stopped_by_clstr
from .transport.endreport import report_printf
from .transport.interface import AttemptHandler
from .transport.prelude import enter_workdir

# The copy's stderr kept for the node's words (its last line is used).
SAID_BYTES = 4096


def copy_program(token, body, name, args, workdir=None):
    """The argv (bytes) of a copy: ``sh -c`` running ``body`` (POSIX sh
    text, ``$1``... its ``args``) between a start report and the end report
    that ``clstr_done STATUS`` writes before it exits, both with ``token``
    (the reader's: a --workers run has one per attempt), in ``workdir``
    (--workdir, bytes, or None: where the node's sessions start), as the
    jobs are: a relative path is the jobs'.  It exits 0 once it has
    reported, so that no transport adds words of its own about its status
    (srun's "exited with exit code 1")."""
    head = ("clstr_done() { %s \"$1\" >&2; exit 0; }; %s >&2; "
            % (report_printf(token, "e%d"), report_printf(token, "s"))).encode()
    script = head + enter_workdir(workdir, b"clstr_done 1") + body.encode()
    return [b"sh", b"-c", script, name.encode()] + list(args)


def remote_path(path):
    """``path`` (bytes) as a copy's argument: a relative one as ./path, so
    that no program the copy runs takes it for an option."""
    return path if path.startswith(b"/") else b"./" + path


class RemoteCopy(AttemptHandler):
    """Runs ``program(token)`` (copy_program's argv) on ``slot``'s node
    through ``transport``, with ``stdin_data`` (bytes or a local file) on
    its stdin; ``on_stdout(data)`` gets its stdout as it comes; then
    either ``done(failure)`` (None: the file was copied) or
    ``unstarted(error)``: nothing ran, because its master had gone (``error``
    None: the transport starts another, and the slot waits for it) or no fd
    or process was left (the OSError).  ``session`` is the transport's
    Session.  Raises OSError as ``Transport.open`` does."""

    def __init__(self, transport, slot, program, done, unstarted, stdin_data=None,
                 on_stdout=None):
        self._done = done
        self._unstarted = unstarted
        self._on_stdout = on_stdout
        self._said = b""
        self._stopped = None
        self._reports = transport.report_reader()
        self.session = transport.remote_process(slot, self, program(self._reports.token),
                                                self._reports, stdin_data)

    def output(self, stream, data):
        if stream == 1:
            if self._on_stdout is not None:
                self._on_stdout(data)
        else:
            self._said = (self._said + data)[-SAID_BYTES:]

    def ended(self, code, failure):
        self._done(judge_copy(failure, code, self._reports, self._stopped, self._said))

    def unstarted(self, error):
        self._unstarted(error)

    def stop(self, grace):
        """clstr stops the copy (Ctrl-C, the run's end): its result is
        then clstr's reason, whatever the node said."""
        if self._stopped is None:
            self._stopped = stopped_by_clstr()
        self.session.stop(grace)
