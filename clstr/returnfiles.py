"""``--return PATH``: after a job's attempt completed, copy the file PATH
back from its node (GNU parallel's --return, rpdcp), over the connection
the job used (filecopy.py: ``cat`` in a copy program of clstr's own).

The attempt is not over until its files are here: each arrives into a
fresh hidden file beside its local name (userfiles.PartialFile, written as
it comes, never held in memory) and all are renamed into place only once
every one arrived whole, so an attempt that failed, or whose files could
not all be fetched, leaves nothing under their names.  A file the node
cannot give (missing, unreadable) fails the attempt as a job's own exit
would (``Kind.FILE``, in the node's words); a connection lost meanwhile is
a lost connection; clstr's own write errors are exit 3.

Where a file lands: under ``--output-dir DIR`` in ``DIR/<job number>/PATH``
(an absolute PATH without its leading /), else at PATH relative to where
clstr runs, which must then differ for each job (``{#}``).  No local path
leaves the current directory or DIR, and no symbolic link below them is
followed (PartialFile).
"""

import errno
import os

from .errors import LocalIOError
from .failures import cannot_start_ssh, stopped_by_clstr
from .filecopy import RemoteCopy, copy_program, remote_path
from .limits import out_of_resources
from .transport.interface import Session
from .userfiles import PartialFile, new_file_mode

# Tried again after this long when the copy could not start (no fd or
# process left, or the master gone and a new one coming).
RETRY_AFTER = 0.5

# $1: the file.  cat says why it cannot (its words are the failure's).
_RETURN = ("if [ -d \"$1\" ]; then printf \"%s: Is a directory\\n\" \"$1\" >&2; clstr_done 1; "
           "fi; cat -- \"$1\"; clstr_done $?")


class ReturnPathError(Exception):
    """A --return PATH (``shown``) that cannot be used, and why: a usage
    error, or for one job's values clstr's own refusal."""

    def __init__(self, shown, reason):
        super().__init__("%s: %s" % (shown, reason))
        self.shown = shown
        self.reason = reason


def return_path(template, job, slot):
    """The file (str) ``template`` (``check_return``'s) names for ``job``'s
    attempt on ``slot``: the argument templates' strings filled in
    (templates.Template.fill_path), unquoted."""
    return os.fsdecode(template.fill_path(job.seq, job.values, slot.index + 1,
                                          slot.host.name))


def check_return(pattern, output_dir, groups):
    """The Template of ``--return pattern`` in a run with ``groups`` input
    groups (:::), checked: the strings of argument templates, {#} (the
    job's number), {%} and {host} (its slot and node), and with inputs {}
    and its forms, each filled in as it is.  Raises ReturnPathError unless
    it names a file that lands under ``output_dir`` (a path, or None: the
    current directory), a different one for each job without it."""
    from .templates import Template, TemplateError
    shown = "--return %s" % pattern
    if not pattern or "\0" in pattern:
        raise ReturnPathError(shown, "not a file name")
    try:
        template = Template(os.fsencode(pattern), groups, append=False, option="--return")
    except TemplateError as error:
        # Its words begin with the option and PATH, as ours do.
        raise ReturnPathError(shown, str(error).split(": ", 1)[-1]) from None
    if output_dir is None and not template.per_job:
        raise ReturnPathError(shown, "every job would fetch its file to the same place; put "
                              "{#} (the job's number) in PATH, or give --output-dir DIR "
                              "(each job's files in DIR/N/)")
    example = os.fsdecode(template.fill_path(1, (b"x",) * groups, 1, "h"))
    local_relative(example, output_dir, shown)
    return template


def local_relative(path, output_dir, shown):
    """Where ``path`` lands, relative to the current directory, or to
    ``output_dir``'s job directory: normalised, never above it.  Raises
    ReturnPathError."""
    if os.path.isabs(path) and output_dir is None:
        here = os.getcwd()
        if os.path.commonpath([here, os.path.normpath(path)]) != here:
            raise ReturnPathError(shown, "lands outside the current directory; give "
                                  "--output-dir DIR (each job's files in DIR/N/%s)"
                                  % path.lstrip("/"))
        path = os.path.relpath(path, here)
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ReturnPathError(shown, "'..' would land outside %s" % (
            "the current directory" if output_dir is None else output_dir))
    if not parts:
        raise ReturnPathError(shown, "names no file")
    return "/".join(parts)


class Returns:
    """The run's --return files (``templates``: check_return's), fetched through
    ``transport`` under ``loop`` into ``output_dir`` (a path, or None: the
    current directory).  ``guarded(what, write, *args)`` runs one of
    clstr's own writes (attempts.AttemptsOwner.guarded), stopping the run
    if it fails; it returns whether it succeeded."""

    def __init__(self, loop, transport, templates, output_dir, workdir, guarded):
        self.workdir = workdir  # --workdir: where relative PATHs are
        self.loop = loop
        self.transport = transport
        self._templates = templates
        self._output_dir = output_dir
        self.guarded = guarded
        # As a shell's > would make them.
        self.mode = new_file_mode()

    def fetch(self, job, slot, done):
        """Fetch ``job``'s files from ``slot``'s node; returns the Session
        fetching them.  ``done(failure)``: None once all are in place."""
        return _Fetch(self, job, slot, done)

    def copies(self, job, slot):
        return copies(self._templates, self._output_dir, job, slot)


def copies(templates, output_dir, job, slot):
    """(remote path, local directory, path below it) for each of ``job``'s
    files (``templates``) from ``slot``'s node, under ``output_dir`` (or
    None).  Raises ReturnPathError for a value that would land a file
    outside (an input such as ../x)."""
    pairs = []
    for template in templates:
        path = return_path(template, job, slot)
        local = local_relative(path, output_dir, "--return %s (job %d)" % (path, job.seq))
        if output_dir is None:
            pairs.append((path, ".", local))
        else:
            pairs.append((path, output_dir, "%d/%s" % (job.seq, local)))
    return pairs


def describe_returns(transport, templates, output_dir, workdir, job, slot):
    """(argv, local path) of each copy of ``job``'s files from ``slot``'s
    node (--dry-run)."""
    token = transport.report_reader().token
    return [(transport.describe_remote(slot, _program(remote, workdir)(token)),
             os.path.normpath(os.path.join(root, local)))
            for remote, root, local in copies(templates, output_dir, job, slot)]


def _program(path, workdir):
    return lambda token: copy_program(token, _RETURN, "clstr-return",
                                      [remote_path(os.fsencode(path))], workdir)


class _Fetch(Session):
    """One attempt's files, fetched one after another; the attempt's
    Session until they are all in place (or one could not be)."""

    def __init__(self, returns, job, slot, done):
        self._returns = returns
        self._slot = slot
        self._done = done
        self._partials = []  # those fetched, and the one being fetched
        self._copy = None
        self._retry = None
        self._over = False
        try:
            self._left = returns.copies(job, slot)
        except ReturnPathError as error:
            # A value that would land a file outside: clstr's refusal.
            self._left = []
            self._returns.guarded("--return", _refuse, error)
            self._end(stopped_by_clstr())
            return
        self._copy_next()

    def _copy_next(self):
        self._retry = None
        if not self._left:
            if self._returns.guarded("--return", self._publish):
                self._end(None)
            return
        remote, root, local = self._left[0]
        made = []
        if not self._returns.guarded(os.path.join(root, local), lambda: made.append(
                PartialFile(root, local, self._returns.mode))):
            # The run is stopping (exit 3): this attempt with it.
            self._end(stopped_by_clstr())
            return
        partial = made[0]
        try:
            self._copy = RemoteCopy(self._returns.transport, self._slot,
                                    _program(remote, self._returns.workdir),
                                    lambda failure: self._copied(partial, failure),
                                    lambda error: self._unstarted(partial, error),
                                    on_stdout=lambda data: self._write(partial, data))
        except OSError as error:
            self._unstarted(partial, error)
            return
        self._left.pop(0)
        self._partials.append(partial)

    def _write(self, partial, data):
        if not partial.discarded:
            self._returns.guarded(partial.shown, partial.write, data)

    def _copied(self, partial, failure):
        self._copy = None
        if failure is None and partial.discarded:
            failure = stopped_by_clstr()  # it could not be written here
        if failure is None:
            self._copy_next()
        else:
            self._end(failure)

    def _unstarted(self, partial, error):
        """Nothing ran: the master had gone (``error`` None) or no fd or
        process was left; tried again shortly (through the new master, or
        the ssh client meanwhile)."""
        self._copy = None
        partial.discard()
        if error is not None and not out_of_resources(error):
            self._end(cannot_start_ssh(error))
            return
        self._retry = self._returns.loop.call_later(RETRY_AFTER, self._copy_next)

    def _publish(self):
        while self._partials:
            self._partials.pop(0).publish()

    def _discard(self):
        while self._partials:
            self._partials.pop().discard()

    def _end(self, failure):
        if not self._over:
            self._over = True
            self._discard()
            self._done(failure)

    # -- the attempt's Session -------------------------------------------------

    def stop(self, grace):
        if self._retry is not None:
            self._retry.cancel()
            self._end(stopped_by_clstr())
        elif self._copy is not None:
            self._copy.stop(grace)

    def kill(self):
        self._over = True
        if self._retry is not None:
            self._retry.cancel()
        if self._copy is not None:
            self._copy.session.kill()
        self._discard()

    def pause(self):
        if self._copy is not None:
            self._copy.session.pause()

    def resume(self):
        if self._copy is not None:
            self._copy.session.resume()


def _refuse(error):
    raise LocalIOError(error.shown, OSError(errno.EPERM, error.reason))
