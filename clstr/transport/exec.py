"""Running attempts through a program other than ssh: ``--exec`` and ``--slurm``.

``--exec TEMPLATE`` runs each attempt as TEMPLATE (split like a shell command
line, never given to a local shell) with ``{host}`` replaced by the node's
name, followed by the remote wrapper as separate words::

    srun --nodes=1 --ntasks=1 --overlap --nodelist={host}
    docker exec -i {host}
    kubectl exec -i {host} --

Unlike ssh (255 for its own errors), srun, docker and kubectl exit 1 when they
fail, just as a job that exits 1, and srun exits 0 when a node fails under a
running step.  So their exit status is never taken for the job's: the wrapper
reports the job's start and end on stderr (endreport.py), and
``failures.classify_exec`` names only what failed before the start: a node
the transport could not reach, or a failure no node can cure (the run must
stop).

``--slurm`` (transport/slurm.py) is this transport with Slurm's nodes and a
question to Slurm's controller.
"""

import functools
import shlex

from ..failures import classify_exec
from .endreport import RUN_TOKEN, ReportReader
from .interface import Transport
from .process import ProcessSession
from .worker import worker_argv
from .wrapper import stdin_payload, wrapper_argv

HOST_FIELD = "{host}"


class ExecTemplateError(ValueError):
    """An ``--exec`` template that cannot be used (a usage error)."""


# --- the template ---------------------------------------------------------

def parse_exec_template(text):
    """The words of ``--exec`` ``text``, split as a POSIX shell would split a
    simple command (quotes and backslashes; no variables, globs or
    operators: nothing is given to a shell).  Raises ExecTemplateError
    unless some word holds ``{host}`` and the program itself does not."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise ExecTemplateError("--exec %r: %s" % (text, error)) from None
    if not words:
        raise ExecTemplateError("--exec: empty template; give a command line "
                                "with {host}, e.g. --exec 'docker exec -i {host}'")
    if not any(HOST_FIELD in word for word in words):
        raise ExecTemplateError("--exec %r has no {host}: say where the node's name goes, "
                                "e.g. --exec 'docker exec -i {host}'" % text)
    # The program run locally must not depend on a node's name (which may
    # come from a file or $SLURM_JOB_NODELIST).
    if HOST_FIELD in words[0]:
        raise ExecTemplateError("--exec %r: {host} cannot be in the program's name" % text)
    return words


def exec_argv(template_words, host, wrapper_words):
    """The argv of one attempt: ``template_words`` with ``{host}`` replaced
    by ``host`` inside each word, then ``wrapper_words`` (str or bytes) as
    they are.  Replacing within words never adds a word, so a host is an
    option only if a word is exactly ``{host}`` and the host starts with
    "-", which validated hosts never do; checked again here all the same."""
    if not host or host.startswith("-"):
        raise ValueError("not a usable host name for --exec: %r" % host)
    return [word.replace(HOST_FIELD, host) for word in template_words] + list(wrapper_words)


def wrapper_words(command, prelude=b"", token=RUN_TOKEN):
    """The remote wrapper as argv words after an exec template, running
    ``command`` (bytes) after ``prelude`` (transport/prelude.py), each one
    argument (no quoting: no shell reads them as text).  The wrapper
    reports the job's start and end (endreport.py) with ``token``."""
    return wrapper_argv(command, token, prelude)


class ExecTransport(Transport):
    """Attempts through the ``--exec`` template ``words``
    (parse_exec_template), one local process each, run under ``loop``."""

    def __init__(self, words, loop):
        self._words = words
        self._loop = loop

    def report_reader(self):
        # What the transport says before the job starts and after it ended
        # is its own business, not the job's stderr (it is kept for the
        # failure's reason).
        return ReportReader(before_start="drop", after_end="drop")

    def open(self, attempt, handler):
        argv = self.argv_on(attempt.slot, wrapper_words(attempt.command, attempt.prelude,
                                                        attempt.reports.token))
        # Signalled as a whole process group: an --exec program's children
        # must not outlive it.
        return ProcessSession(self._loop, argv, handler,
                              functools.partial(self.classify_end, attempt.reports),
                              attempt.reports, group=True,
                              stdin_data=stdin_payload(attempt.command))

    def describe(self, job, slot, prelude):
        return self.argv_on(slot, wrapper_words(job.command_on(slot), prelude))

    def remote_process(self, slot, handler, words, reports, stdin_data=None):
        return ProcessSession(self._loop, self.describe_remote(slot, words), handler,
                              functools.partial(self.classify_end, reports), reports,
                              group=True, stdin_data=stdin_data)

    def describe_remote(self, slot, words):
        return self.argv_on(slot, words)

    def worker_process(self, slot, handler, classify_end):
        """A worker's process (workerpool.Worker) on ``slot``'s node,
        reporting to ``handler``, its end named by ``classify_end(code,
        stderr_tail, done)``; its stderr as it comes (each job's session
        reads its own reports)."""
        # Signalled as a whole process group, as an attempt's process is.
        return ProcessSession(self._loop, self.describe_worker(slot), handler, classify_end,
                              None, group=True)

    def describe_worker(self, slot):
        """The argv ``worker_process`` runs (--dry-run)."""
        return self.argv_on(slot, worker_argv())

    def argv_on(self, slot, words):
        """The template's argv for ``slot``'s node, running ``words``."""
        return exec_argv(self._words, slot.host.name, words)

    def classify_end(self, reports, code, stderr_tail, done):
        """Calls ``done(failure)`` with the failure of the attempt whose
        ``reports`` these are, which exited with ``code`` (classify_exec)."""
        done(classify_exec(code, stderr_tail))
