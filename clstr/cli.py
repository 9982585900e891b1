"""The command line: turns argv into a Plan, and nothing else.

Compatible with clstr 0.1.0: same long and short options, same meanings.
Every mistake a user can make is one line on stderr and exit status 2, before
anything has started.
"""

import argparse
import math
import os
import shlex
import shutil
import stat
import sys

from . import __version__
from .exits import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_LOCAL_IO, EXIT_OK, EXIT_USAGE

EXAMPLES = """\
examples:
  clstr -n host1 -n host2 -j 'echo hello' -j 'echo again' -j 'uname -n'
  clstr -N nodes.txt -J jobs.txt --status
  clstr -N nodes.txt -J <(for i in $(seq 10); do echo "echo job $i"; done)
  clstr -N nodes.txt -E 'grep "model name" /proc/cpuinfo' | sort | uniq -c
  clstr -n 'lab[01-40]' -E 'uname -r' --gather
  clstr -n 'lab[01-40]' --send model.bin -J jobs.txt --return 'out/{#}.csv'
  clstr -n 'lab[01-40]' -J jobs.txt -A /tmp/running -v
  clstr -n '4/lab[01-40]' -J jobs.txt -k
  clstr -N nodes.txt -J <(sed 's/^/[ -z "$(users)" ] \\&\\& /' jobs.txt)
  clstr -N nodes.txt -J jobs.txt --halt now,fail=1
  clstr -N nodes.txt -J jobs.txt --retries 3 --timeout 600
  clstr -N nodes.txt --env MODEL --workdir '~/runs' -j './train --seed $CLSTR_SEQ'
  clstr -N nodes.txt -j 'gzip -9 {}' ::: *.log
  clstr -N nodes.txt -j './sim --seed {1} --size {2} > out/{1}-{2}' ::: 1 2 3 ::: 10 100
  find data -name '*.csv' | clstr -N nodes.txt -a - -j 'convert {} {.}.parquet'
  clstr --exec 'docker exec -i {host}' -n web1 web2 -j 'nginx -t'
  salloc -N 4 -n 32 clstr --slurm -J jobs.txt

A job is a shell command run on a node with 'ssh NODE COMMAND'. Each listed
node is one slot (write 4/NODE, or list it 4 times, to run 4 jobs on it at
once). If ssh exits non-zero, clstr cannot tell the node from the job, so it
retires the node and runs the job elsewhere; a job can use this to refuse
unsuitable nodes: the sed example runs every job of jobs.txt only on nodes
where nobody is logged in.

templates, as in GNU parallel: given inputs (::: VALUES, :::: FILES, -a FILE,
-a - for stdin; one value a line; several inputs combine as every
combination, the last varying fastest), the --job is run once for each,
with {} the value(s), {.} without extension, {/} basename, {//} dirname, {/.}
basename without extension, {1} {2} {1.}... the value of the first, second
input, {#} the job's number, {%} the slot's, {host} the node's name.  Each
value is quoted for sh as GNU parallel quotes it; without any of these
strings the values are appended.  Job files, and --job without inputs, are
never templates.  The joblog shows {%} and {host} as written.

exit status: 0 every job completed (or --halt ...,success=N was met); 1 some
did not (no node left to run them, or given up: --timeout, --job-failure job,
--max-attempts, --retries; or --halt ...,fail=N ended the run; the report says
which); 2 usage or input error (nothing was started); 3 clstr could not write
its own output (stdout, stderr, --joblog, -A, --output-dir); 130/143/129
interrupted by SIGINT/SIGTERM/SIGHUP; 141 stdout was closed.
"""


class UsageError(Exception):
    """A mistake in the command line or its input files; exit status 2."""


# clstr 0.1.0's long options.  Any abbreviation that selected one of them
# there selects the same one here, whatever options were added since
# (--job-f is --job-file, not ambiguous with --job-failure).
OLD_LONG_OPTIONS = ("--help", "--version", "--node", "--node-file", "--max-nodes",
                    "--max-node-uses", "--job", "--job-file", "--on-each-node", "--stdout",
                    "--stderr", "--verbose", "--status", "--active-nodes")


def expand_old_abbreviations(argv, known):
    """``argv`` with each abbreviation of a 0.1.0 long option written out in
    full, as 0.1.0 would have read it.  ``known``: every option string of
    today's parser (exact names are left alone).  Only words in option
    position change: argparse reads any word starting with "--" as an
    option, and "--" alone ends the options."""
    expanded = []
    for index, word in enumerate(argv):
        if word == "--":
            return expanded + list(argv[index:])
        if word.startswith("--"):
            name, equals, value = word.partition("=")
            if name not in known:
                matches = [option for option in OLD_LONG_OPTIONS if option.startswith(name)]
                if len(matches) == 1:
                    word = matches[0] + equals + value
        expanded.append(word)
    return expanded


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_args(expand_old_abbreviations(args, self._option_string_actions),
                                  namespace)


def build_parser():
    parser = _Parser(
        prog="clstr",
        description="Run shell commands (jobs) in parallel on a set of machines "
                    "(nodes) over ssh; the jobs' output is merged into clstr's.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", "-V", action="version", version="clstr " + __version__)

    nodes = parser.add_argument_group(
        "nodes", "Where jobs run.  Each host is one slot (one job at a time); "
        "N/host gives it N slots, as GNU parallel's -S 4/host does (4/lab[01-40]: "
        "four on each of lab01..lab40), and so does listing it N times.")
    nodes.add_argument("--node", "-n", metavar="HOST", nargs="+", action="append", default=[],
                       help="hosts to use ([N/][user@]host, ranges like lab[01-40])")
    nodes.add_argument("--node-file", "-N", metavar="FILE", nargs="+", action="append",
                       default=[], help="files listing hosts as -n takes them, one per "
                       "line (# comments)")
    nodes.add_argument("--max-nodes", "-m", metavar="N", type=_count, default=0,
                       help="run at most N jobs at once (0: one per slot; default 0)")
    nodes.add_argument("--max-node-uses", "-u", metavar="N", type=_count, default=0,
                       help="a slot runs at most N jobs, then retires (0: unlimited)")

    jobs = parser.add_argument_group(
        "jobs", "What to run: shell commands, run by the node's login shell.  Each job\n"
        "has CLSTR_SEQ (its number), CLSTR_SLOT (its slot on its node, from 1) and\n"
        "CLSTR_HOST (the node's name as listed) in its environment.")
    jobs.add_argument("--job", "-j", metavar="COMMAND", action="append", default=[],
                      help="a command to run (may be repeated); with inputs (::: :::: "
                      "-a), the one template run for each (see templates below)")
    jobs.add_argument("--job-file", "-J", metavar="FILE", nargs="+", action="append",
                      default=[], help="files of commands, one per line; a named pipe "
                      "such as <(...), or - for stdin; read as the run goes")
    jobs.add_argument("--on-each-node", "-E", metavar="COMMAND",
                      help="run COMMAND once on every node (not with --job/--job-file)")
    jobs.add_argument("--env", metavar="NAME", action="append", default=[],
                      help="give every job the variable NAME with its value here, "
                      "whatever bytes it holds (may be repeated); NAME must be set "
                      "(export NAME= for an empty one)")
    jobs.add_argument("--workdir", metavar="DIR",
                      help="run jobs in DIR, made if missing (relative to the login "
                      "directory; ~ and ~/x are the node's home); a DIR that cannot be "
                      "made or entered fails the job (exit 125) as its own exit would")
    jobs.add_argument("--arg-file", "-a", metavar="FILE", action="append", default=[],
                      help="an input for the --job template, one value a line (- for "
                      "stdin); as ':::: FILE', before the ::: and :::: inputs (see "
                      "templates below)")

    failures = parser.add_argument_group(
        "failures", "By default, as in clstr 0.1.0, any non-zero exit of ssh retires "
        "the node and the job runs elsewhere.")
    failures.add_argument("--job-failure", choices=("node", "job"),
                          help="what a job's own non-zero exit means: 'node' (default) "
                          "retires the node and reruns the job elsewhere; 'job' marks "
                          "only the job failed (implied by --retries and --halt)")
    failures.add_argument("--max-attempts", metavar="N", type=_count, default=0,
                          help="give a job up after it failed on N nodes (0: never, "
                          "the default, so node-filtering jobs work); with --job-failure "
                          "node each failure also retires its node: to rerun a flaky job "
                          "on healthy nodes, use --retries")
    failures.add_argument("--retries", metavar="N", type=_count,
                          help="run a job that fails on its own up to N times in all "
                          "(GNU parallel's --retries; 0: no limit), each time on a node "
                          "where it failed least, the same node only when no other is "
                          "left; implies --job-failure job, so no node is retired for a "
                          "job's exit (a refused or lost connection still retires its "
                          "node, and that try does not count)")
    failures.add_argument("--halt", metavar="WHEN,WHAT=N", type=_halt,
                          help="end the run early, as GNU parallel's --halt: WHEN 'soon' "
                          "starts no new job and lets the running ones finish, 'now' also "
                          "stops them as Ctrl-C would; WHAT 'fail=N' or 'success=N' jobs, "
                          "or N%% of all jobs (of a pipe's jobs once it ends): now,fail=1, "
                          "soon,fail=10%%, now,success=1 ('never', and parallel's 0, 1, 2, "
                          "-1, -2 too). Implies --job-failure job: a job's exit is its own "
                          "failure, counted, never its node's (retiring nodes for it "
                          "instead would contradict halting on it). Exits 1 on fail=, 0 on "
                          "success=; the report names the job")
    failures.add_argument("--timeout", metavar="SECONDS", type=_seconds,
                          help="kill a job (on the node too) that runs longer; it is "
                          "reported as 'timeout' and not rerun (unless --retries)")
    failures.add_argument("--retry-nodes", metavar="SECONDS", type=_seconds, default=0,
                          help="try a node retired for a connection failure again after "
                          "SECONDS (doubling after each failure), and use it again if it "
                          "answers (default 0: never)")
    failures.add_argument("--joblog", metavar="FILE",
                          help="log each finished attempt to FILE, in GNU parallel's "
                          "joblog format")
    failures.add_argument("--resume", action="store_true",
                          help="with --joblog: skip jobs the joblog shows completed, "
                          "and append to it")

    output = parser.add_argument_group(
        "output", "Jobs' stdout goes to clstr's stdout and their stderr to its "
                  "stderr, merged line by line.")
    output.add_argument("--tag", action="store_true",
                        help="prefix every output line with the node's name ('host: ')")
    output.add_argument("--group", action="store_true",
                        help="print each job's whole output at once when it completes "
                        "(stdout, then stderr); output of failed attempts is dropped")
    output.add_argument("--gather", action="store_true",
                        help="with -E: when the run ends, print each distinct output once, "
                        "under the nodes that gave it, folded (a line '%s' above the "
                        "output), largest group first, as clush -b and dshbak -c do; stderr's "
                        "groups go to stderr. Exit status and failure report as without it; "
                        "a failed job's output is shown too, unless cut short (lost "
                        "connection, --timeout, Ctrl-C)" % "lab[01-07,09] (8)")
    output.add_argument("--keep-order", "-k", action="store_true",
                        help="print jobs' output in the order of the jobs, as GNU parallel "
                        "-k does: the first unfinished job's lines as they come, each later "
                        "job's held (on disk when large) until every job before it has "
                        "finished; with --group, whole jobs in order (not with "
                        "--output-dir)")
    output.add_argument("--output-dir", metavar="DIR",
                        help="write job N's stdout and stderr to DIR/N.out and DIR/N.err "
                        "(complete files only) and an index to DIR/index.tsv (job, status: 0 or "
                        "the failure's name, host, command)")
    output.add_argument("--stdout", "-o", metavar="FILE", nargs="?", const=os.devnull,
                        help="write jobs' stdout to FILE (no FILE: discard it)")
    output.add_argument("--stderr", "-e", metavar="FILE", nargs="?", const=os.devnull,
                        help="write jobs' stderr to FILE (no FILE: discard it)")

    files = parser.add_argument_group(
        "files to and from the nodes", "Over the connection the jobs use (no extra login "
        "with connection sharing); each file whole or not at all.")
    files.add_argument("--send", metavar="FILE", nargs="+", action="append", default=[],
                       help="copy FILE to every node once, before its first job: a relative "
                       "path lands relative to the jobs' directory (the home, or --workdir), "
                       "an absolute "
                       "one where it names; mode kept (less setuid/setgid), owner the remote "
                       "user, mtime not kept. A node that cannot store it is retired in its "
                       "own words. -E true --send FILE does what pdcp does")
    files.add_argument("--return", metavar="PATH", dest="returns", action="append",
                       default=[], help="after a job completed, copy PATH back from its "
                       "node (relative to the jobs' directory): with --output-dir DIR into "
                       "DIR/N/PATH, else to PATH here, which then needs {#} (the job's "
                       "number) or an input's {}; PATH takes the templates' strings, "
                       "unquoted, e.g. --return '{/.}.out'. A missing file fails the job "
                       "like an exit of its own. "
                       "-E CMD --return PATH --output-dir DIR does what rpdcp does")

    watching = parser.add_argument_group("watching")
    watching.add_argument("--dry-run", action="store_true",
                          help="print the command lines (ssh, or --exec's) that would "
                          "run, one per line, and start nothing")
    watching.add_argument("--verbose", "-v", action="count", default=0,
                          help="say each failed attempt and node retirement as it "
                          "happens, and print the failure report even when every job "
                          "completed (-vv: list every job not completed, not only the "
                          "first 20)")
    watching.add_argument("--status", "-s", action="store_true",
                          help="show a live status line on the terminal (stderr, or the "
                          "controlling terminal when stderr is redirected)")
    watching.add_argument("--active-nodes", "-A", metavar="FILE",
                          help="keep FILE listing which node runs which job")

    ssh = parser.add_argument_group(
        "ssh", "How clstr reaches nodes by default (not with --exec or --slurm).")
    ssh.add_argument("--ssh-command", metavar="CMD",
                     help="the ssh client and its arguments, split like a shell "
                     "does (default: ssh), e.g. 'ssh -F ./ssh_config'")
    ssh.add_argument("--ssh-option", "-O", metavar="OPTION", action="append",
                     help="an ssh -o option, e.g. -O User=alice (overrides clstr's "
                     "defaults; may be repeated)")
    ssh.add_argument("--multiplex", dest="multiplex", action="store_true", default=None,
                     help="share one ssh connection (ControlMaster) per host among its "
                     "jobs: much faster for many short jobs (default, except with -E)")
    ssh.add_argument("--no-multiplex", dest="multiplex", action="store_false",
                     help="one ssh connection per job")
    ssh.add_argument("--max-sessions", metavar="N", type=_count,
                     help="jobs sharing one connection at most; match sshd's "
                     "MaxSessions (default 10)")
    ssh.add_argument("--connect-timeout", metavar="SECONDS", type=_seconds,
                     help="give up on a node that has not answered in time (default 5); "
                     "also with --exec and --slurm, where a job not started within this "
                     "and 15 s more is given up on that node")
    ssh.add_argument("--alive-interval", metavar="SECONDS", type=_seconds,
                     help="probe a quiet connection this often; 3 probes unanswered "
                     "mean a hung node (default 5, so about 15 s)")

    other = parser.add_argument_group(
        "other transports", "Run jobs through Slurm, containers or any other program "
        "instead of ssh.")
    other.add_argument("--exec", metavar="TEMPLATE", dest="exec_template",
                       help="run each job as TEMPLATE with {host} replaced by the node's "
                       "name, followed by clstr's remote wrapper (split like a shell "
                       "command line, never run by a local shell), e.g. "
                       "'docker exec -i {host}' or 'kubectl exec -i {host} --'")
    other.add_argument("--slurm", action="store_true",
                       help="inside a Slurm allocation: nodes and their task slots from "
                       "$SLURM_JOB_NODELIST and $SLURM_TASKS_PER_NODE, jobs run as srun "
                       "steps (%s)" % _SRUN_SHOWN)
    other.add_argument("--workers", action="store_true",
                       help="start one long-lived worker per slot (under --slurm one srun "
                       "step per slot, not per job; over ssh one session per slot through "
                       "the host's master) and send it the slot's jobs one at a time: a "
                       "job costs a fork on its node")
    return parser


# ssh-only options, their defaults, and the word a usage error names them by.
_SSH_ONLY = (("ssh_command", "ssh", "--ssh-command"), ("ssh_option", [], "--ssh-option"),
             ("multiplex", None, "--multiplex/--no-multiplex"),
             ("max_sessions", 10, "--max-sessions"),
             ("alive_interval", 5.0, "--alive-interval"))
# Programs that join their arguments into one string for a remote shell, so
# the wrapper's words would arrive re-split; and wrappers that run the next
# word as the program.
_RESPLITTING = ("ssh",)
_PROGRAM_RUNNERS = ("sudo", "env", "nice", "nohup", "ionice", "taskset", "stdbuf", "chrt")
_SRUN_SHOWN = "srun --nodes=1 --ntasks=1 --overlap --quiet --job-name=clstr --nodelist={host}"


# The largest count any option takes: more slots, uses or attempts than any
# run can have, small enough that nothing sized by it fills memory.
MAX_COUNT = 1000000


def _count(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number: %r" % text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative: %r" % text)
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError("at most %d: %r" % (MAX_COUNT, text))
    return value


# The longest time any option takes, about 11.5 days.  The selectors' timeout
# overflows just past 2**31 ms (24.8 days) and ssh takes whole seconds in an
# int; a round limit well below both keeps every timer arithmetic safe.
MAX_SECONDS = 1000000


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0: %r" % text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError("at most %d seconds (about 11 days): %r"
                                         % (MAX_SECONDS, text))
    return value


def _halt(text):
    from .halt import parse_halt
    try:
        return parse_halt(text, MAX_COUNT)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def _job_failure(args):
    """--job-failure, as given or implied: --retries and --halt count a
    job's own exit as that job's failure, so they cannot have it blame the
    node."""
    implied_by = [option for option, value in (("--retries", args.retries),
                                               ("--halt", args.halt)) if value is not None]
    if not implied_by:
        return args.job_failure or "node"
    if args.job_failure == "node":
        raise UsageError("%s counts a job's own exit as that job's failure, and --job-failure "
                         "node as its node's: drop --job-failure node" % implied_by[0])
    return "job"


def _flatten(groups):
    return [item for group in groups for item in group]


def _hosts(args):
    from .nodeset import NodeSpecError, expand, read_node_file, validate_host
    hosts = []
    try:
        for spec in _flatten(args.node):
            hosts += [validate_host(name) for name in expand(spec)]
        for path in _flatten(args.node_file):
            hosts += read_node_file(path)
    except NodeSpecError as error:
        raise UsageError(str(error))
    if not hosts and args.slurm:
        from .transport.slurm import SlurmEnvironmentError, slurm_nodes
        try:
            hosts = [validate_host(name) for name in slurm_nodes(os.environ)]
        except SlurmEnvironmentError as error:
            raise UsageError(str(error))  # it names --slurm already
        except NodeSpecError as error:
            raise UsageError("--slurm: %s" % error)
    if not hosts:
        raise UsageError("no nodes given: use --node HOST or --node-file FILE")
    return hosts


def _check_user_files(args):
    """Every file clstr would write, checked without touching any of them.
    Returns the -A target (resolved, nothing opened)."""
    from .userfiles import UserFileError, check_output_dir, check_writable, snapshot_file
    checks = [("--stdout", args.stdout, check_writable),
              ("--stderr", args.stderr, check_writable),
              ("--joblog", args.joblog, check_writable),
              ("--output-dir", args.output_dir, check_output_dir),
              ("--active-nodes", args.active_nodes, snapshot_file)]
    results = {}
    for option, path, check in checks:
        if path is not None:
            try:
                results[option] = check(path)
            except UserFileError as error:
                raise UsageError("%s: cannot write %s: %s" % (option, path, error))
    return results.get("--active-nodes")


def _regular_identity(stat_of, target):
    """(device, inode) of ``target`` if it is a regular file, else None (a
    missing file, /dev/null, a pipe: writing one cannot destroy an input)."""
    try:
        info = stat_of(target)
    except (OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None


def _check_outputs_are_not_inputs(args, sources, active_nodes):
    """An output that is a job or node file would be truncated or written
    into while it is read: a usage error, found before anything is touched."""
    inputs = {}
    for source in sources:
        inputs.setdefault(_regular_identity(os.fstat, source.fd),
                          "%s %s" % (source.what, source.name))
    for path in _flatten(args.node_file):
        if path == "-":
            inputs.setdefault(_regular_identity(os.fstat, 0), "node file <stdin>")
        else:
            inputs.setdefault(_regular_identity(os.stat, path), "node file " + path)
    inputs.pop(None, None)
    if not inputs:
        return
    outputs = [("--joblog " + str(args.joblog), os.stat, args.joblog),
               ("--stdout " + str(args.stdout), os.stat, args.stdout),
               ("--stderr " + str(args.stderr), os.stat, args.stderr),
               ("--active-nodes " + str(args.active_nodes), os.stat,
                active_nodes and active_nodes.path),
               ("clstr's stdout", os.fstat, 1), ("clstr's stderr", os.fstat, 2)]
    if args.output_dir:
        outputs.append(("--output-dir's index", os.stat,
                        os.path.join(args.output_dir, "index.tsv")))
    for what, stat_of, target in outputs:
        if target is not None:
            clash = inputs.get(_regular_identity(stat_of, target))
            if clash:
                raise UsageError("%s is the %s: clstr would write into what it reads"
                                 % (what, clash))


def _transport(args):
    """The --exec template's words (None for ssh), after checking that no
    ssh-only option came with it; fills in the ssh options' defaults."""
    from .transport.exec import ExecTemplateError, parse_exec_template
    from .transport.slurm import SRUN_TEMPLATE
    template = args.exec_template
    if template is None and args.slurm:
        template = SRUN_TEMPLATE
    given = [name for attribute, _, name in _SSH_ONLY if getattr(args, attribute) is not None]
    for attribute, default, _ in _SSH_ONLY:
        if getattr(args, attribute) is None:
            setattr(args, attribute, default)
    if args.connect_timeout is None:
        args.connect_timeout = 5.0
    if template is None:
        return None
    how = "--exec" if args.exec_template is not None else "--slurm (which runs srun)"
    if given:
        raise UsageError("%s cannot be combined with %s: it is an ssh option" % (how, given[0]))
    try:
        words = parse_exec_template(template)
    except ExecTemplateError as error:
        raise UsageError(str(error))
    if shutil.which(words[0]) is None:
        raise UsageError("%s: %s not found" % (how, words[0]))
    if os.path.basename(_program_word(words)) in _RESPLITTING:
        raise UsageError("--exec %r: ssh joins its arguments into one command line, so "
                         "clstr's wrapper would arrive re-split; use --ssh-command "
                         "instead (e.g. --ssh-command 'ssh -F ./config')" % template)
    return tuple(words)


def _program_word(words):
    """The program a template really runs: the first word after sudo, env,
    nice and the like, and their options and VAR=value words."""
    index = 0
    while index < len(words) - 1 and os.path.basename(words[index]) in _PROGRAM_RUNNERS:
        index += 1
        while index < len(words) - 1 and (words[index].startswith("-")
                                          or "=" in words[index]):
            index += 1
    return words[index]


def _ssh_settings(args):
    from .transport.sshcommand import SshSettings
    try:
        command = shlex.split(args.ssh_command)
    except ValueError as error:
        raise UsageError("--ssh-command: %s" % error)
    if not command:
        raise UsageError("--ssh-command is empty")
    if shutil.which(command[0]) is None:
        raise UsageError("--ssh-command: %s not found (install an ssh client, "
                         "e.g. openssh-client)" % command[0])
    for option in args.ssh_option:
        if "=" not in option and " " not in option.strip():
            raise UsageError("--ssh-option %r: expected NAME=VALUE" % option)
    return SshSettings(command, args.ssh_option, args.connect_timeout, args.alive_interval)


def _job_environment(args):
    """--env's (name, value) pairs, in order, each name once, and
    --workdir, as bytes, checked to fit on a command line."""
    from .transport.prelude import PRELUDE_MAX, is_env_name, job_prelude
    from .transport.wrapper import shell_quote
    env = []
    for name in dict.fromkeys(args.env):
        if not is_env_name(name):
            raise UsageError("--env %r: not a variable name (letters, digits and _, "
                             "not starting with a digit)" % name)
        value = os.environb.get(os.fsencode(name))
        if value is None:
            raise UsageError("--env %s: %s is not set here (export %s= to give jobs an "
                             "empty one)" % (name, name, name))
        env.append((os.fsencode(name), value))
    workdir = None
    if args.workdir is not None:
        if not args.workdir:
            raise UsageError("--workdir: empty directory name")
        workdir = os.fsencode(args.workdir)
    # What every job's command line carries besides the job (quoted once
    # more where the login shell is not known).
    size = len(shell_quote(job_prelude(0, 0, "", env, workdir)))
    if size > PRELUDE_MAX:
        raise UsageError("--env and --workdir take %d bytes on every job's command line, "
                         "at most %d: pass big values in a file" % (size, PRELUDE_MAX))
    return tuple(env), workdir


def _resume_skip(args):
    """With --resume, a predicate for the jobs the joblog shows done (the
    joblog is only read here; it is opened for writing when the run starts)."""
    from .records import JoblogError, completed_in_joblog, job_key
    if not args.resume:
        return None
    try:
        done = completed_in_joblog(args.joblog)
    except JoblogError as error:
        raise UsageError(str(error))
    return lambda job: job_key(job) in done


def _check_gather(args):
    if not args.gather:
        return
    if args.on_each_node is None:
        raise UsageError("--gather needs --on-each-node (-E): it groups nodes by their output")
    for given, option in ((args.tag, "--tag"), (args.group, "--group"),
                          (args.keep_order, "--keep-order"), (args.output_dir, "--output-dir")):
        if given:
            raise UsageError("--gather cannot be combined with %s: it prints each output "
                             "once, under its nodes' names" % option)


def _template(args, groups, job_files):
    """The --job template (templates.Template) when inputs are given, else
    None; raises UsageError for what cannot go with inputs."""
    from .templates import FILES, Template, TemplateError
    if not groups:
        return None
    inputs = "inputs (:::, ::::, --arg-file)"
    if job_files:
        raise UsageError("%s cannot be combined with --job-file: job files are never "
                         "templates; give the template with --job" % inputs)
    if args.on_each_node is not None:
        raise UsageError("%s cannot be combined with --on-each-node" % inputs)
    if len(args.job) != 1:
        raise UsageError("%s need exactly one --job template, e.g. -j 'gzip {}' (%d given)"
                         % (inputs, len(args.job)))
    stdin = groups.count((FILES, "-")) + _flatten(args.node_file).count("-")
    if stdin > 1:
        raise UsageError("stdin (-) is given as more than one input or node file")
    try:
        return Template(os.fsencode(args.job[0]), len(groups))
    except TemplateError as error:
        raise UsageError(str(error))


def _files(args, groups):
    """The --send files (checked) and --return templates, in a run with
    ``groups`` input groups."""
    if not (args.send or args.returns):
        return (), ()
    from .returnfiles import ReturnPathError, check_return
    from .sendfiles import SendFileError, sent_files
    try:
        sends = tuple(sent_files(_flatten(args.send)))
        returns = tuple(check_return(pattern, args.output_dir, groups)
                        for pattern in args.returns)
    except (SendFileError, ReturnPathError) as error:
        raise UsageError(str(error))
    return sends, returns


def make_plan(argv):
    """Parse and check ``argv``: returns a Plan and the job feed, or raises
    UsageError.  Reads inputs (node files, job files, a joblog to resume) but
    opens, creates or truncates no output: the Plan holds only paths, and
    ``open_outputs`` opens them when a run really starts."""
    from .jobs import JobFeed, JobInputError, open_job_file
    from .templates import FILES, TemplateError, split_inputs
    try:
        options, groups = split_inputs(argv)
    except TemplateError as error:
        raise UsageError(str(error))
    args = build_parser().parse_args(options)
    job_files = _flatten(args.job_file)
    groups = [(FILES, path) for path in args.arg_file] + groups
    template = _template(args, groups, job_files)
    if args.on_each_node is not None and (args.job or job_files):
        raise UsageError("--on-each-node cannot be combined with --job or --job-file")
    if args.on_each_node is None and not args.job and not job_files:
        raise UsageError("no jobs given: use --job, --job-file or --on-each-node")
    if job_files.count("-") > 1:
        raise UsageError("--job-file: stdin (-) given more than once")
    if "-" in job_files and "-" in _flatten(args.node_file):
        raise UsageError("--node-file - and --job-file - cannot both read stdin")
    if args.group and args.output_dir:
        raise UsageError("--group and --output-dir cannot be combined")
    _check_gather(args)
    if args.keep_order and args.output_dir:
        raise UsageError("--keep-order and --output-dir cannot be combined: each job's "
                         "output has files of its own there (DIR/N.out, DIR/N.err)")
    if args.resume and not args.joblog:
        raise UsageError("--resume needs --joblog FILE")
    job_failure = _job_failure(args)
    exec_words = _transport(args)
    sends, returns = _files(args, len(groups) if template is not None else 0)
    active_nodes = _check_user_files(args)
    hosts = _hosts(args)
    ssh = _ssh_settings(args)
    skip = _resume_skip(args)
    sources = []
    try:
        if template is not None:
            from .inputs import open_inputs
            inputs, sources = open_inputs(groups)
        for path in job_files:
            sources.append(open_job_file(path))
    except JobInputError as error:
        for source in sources:
            source.close()
        raise UsageError(str(error))
    try:
        _check_outputs_are_not_inputs(args, sources, active_nodes)
    except UsageError:
        for source in sources:
            source.close()
        raise
    env, workdir = _job_environment(args)
    if template is not None:
        feed = JobFeed((), [inputs], skip, template)
    else:
        feed = JobFeed([os.fsencode(job) for job in args.job], sources, skip)
    pinned = args.on_each_node is not None
    if pinned:
        distinct = list(dict.fromkeys(hosts))
        feed.add_pinned(os.fsencode(args.on_each_node), distinct)
    # Imported only now: --version and --help need no dataclasses.
    from .plan import Plan
    plan = Plan(
        hosts=tuple(hosts), pinned=pinned, ssh=ssh,
        # Once per node, a master would cost a connection and save nothing;
        # with files to copy too, a node has several sessions, and saves.
        multiplex=((not pinned or bool(sends or returns)) if args.multiplex is None
                   else args.multiplex) and not exec_words,
        sessions_per_master=args.max_sessions or 10, max_nodes=args.max_nodes,
        max_node_uses=args.max_node_uses, verbose=args.verbose, status=args.status,
        tag=args.tag, group=args.group, keep_order=args.keep_order, gather=args.gather,
        dry_run=args.dry_run,
        max_attempts=args.max_attempts, job_failure=job_failure, timeout=args.timeout,
        retries=args.retries, halt=args.halt,
        retry_nodes=args.retry_nodes, exec_words=exec_words, env=env, workdir=workdir,
        slurm=bool(args.slurm and args.exec_template is None), workers=args.workers,
        # Where output goes: paths, and the -A file resolved but untouched.
        stdout_path=args.stdout, stderr_path=args.stderr, joblog_path=args.joblog,
        resume=args.resume, output_dir_path=args.output_dir,
        active_nodes=active_nodes, sends=sends, returns=returns)
    return plan, feed


def open_outputs(plan):
    """Open (create, truncate) the files a run writes, now that it really
    starts: returns the Plan the run takes (``plan`` with ``stdout_fd``,
    ``stderr_fd`` and an open ``output_dir``) and the joblog or None.
    Raises LocalIOError."""
    import dataclasses

    from .records import Joblog
    from .userfiles import OutputDir, open_for_writing
    # The joblog and output directory are locked first: they may be another
    # run's, and then -o and -e must be left as they were.  They change
    # last, once -o and -e (a FIFO may keep us waiting for its reader) are
    # open too.
    joblog = Joblog(plan.joblog_path, resume=plan.resume) if plan.joblog_path else None
    output_dir = None
    if plan.output_dir_path:
        output_dir = OutputDir(plan.output_dir_path, resume=plan.resume)
    stdout_fd = 1 if plan.stdout_path is None else open_for_writing(plan.stdout_path)
    stderr_fd = 2 if plan.stderr_path is None else open_for_writing(plan.stderr_path)
    for owned in (joblog, output_dir):
        if owned is not None:
            owned.start()
    return dataclasses.replace(plan, stdout_fd=stdout_fd, stderr_fd=stderr_fd,
                               output_dir=output_dir), joblog


def reopen_closed_standard_fds():
    """Put /dev/null on any of fds 0-2 that is closed (``clstr 2>&-``), before
    clstr opens anything: otherwise the next file opened (the joblog, the
    event loop's epoll fd) would become stdout or stderr and receive job
    output."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        # Python leaves sys.stdout etc. None when the fd was closed at start.
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


def raise_open_file_limit():
    """Each running job holds a few fds; let hundreds of slots fit."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else 65536
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv=None):
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C while the run's own handler is not in place: waiting for a
        # FIFO's reader or for a node list on stdin, or for a slow reader of
        # --dry-run.  No traceback, the status a stopped run has; nothing
        # held is worth writing (and writing it might wait again).
        os._exit(EXIT_INTERRUPTED)


def _main(argv):
    reopen_closed_standard_fds()
    argv = sys.argv[1:] if argv is None else argv
    try:
        plan, feed = make_plan(argv)
    except UsageError as error:
        sys.stderr.write("clstr: error: %s (see clstr --help)\n" % error)
        return EXIT_USAGE
    if plan.dry_run:
        from .dryrun import dry_run_lines
        try:
            for line in dry_run_lines(plan, feed):
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            return EXIT_BROKEN_PIPE
        return EXIT_OK
    from .errors import LocalIOError
    from .run import Run
    from .userfiles import InUseError
    try:
        run_plan, joblog = open_outputs(plan)
        raise_open_file_limit()
        return Run(run_plan, feed, joblog).run()
    except LocalIOError as error:
        # The run stops a run cleanly on its own I/O failures; this is
        # for those before it starts, and a last guard.
        sys.stderr.write("clstr: %s\n" % error)
        return EXIT_LOCAL_IO
    except InUseError as error:
        option = "--joblog" if error.path == plan.joblog_path else "--output-dir"
        sys.stderr.write("clstr: error: %s %s\n" % (option, error))
        return EXIT_USAGE
