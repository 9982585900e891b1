"""The command line: turns argv into a Plan, and nothing else.

Compatible with clstr 0.1.0: same long and short options, same meanings.
Every mistake a user can make is one line on stderr and exit status 2, before
anything has started.
"""

import argparse
import os
import shlex
import shutil
import sys

from . import __version__

EXAMPLES = """\
examples:
  clstr -n host1 -n host2 -j 'echo hello' -j 'echo again' -j 'uname -n'
  clstr -N nodes.txt -J jobs.txt --status
  clstr -N nodes.txt -J <(for i in $(seq 10); do echo "echo job $i"; done)
  clstr -N nodes.txt -E 'grep "model name" /proc/cpuinfo' | sort | uniq -c
  clstr -n 'lab[01-40]' -J jobs.txt -A /tmp/running -v
  clstr -N nodes.txt -J jobs.txt -j '[ -z "$(users)" ] && ./experiment'

A job is a shell command run on a node with 'ssh NODE COMMAND'. Each listed
node is one slot (list a host N times to run N jobs on it at once). If ssh
exits non-zero, clstr cannot tell the node from the job, so it retires the node
and runs the job elsewhere; a job can use this to refuse unsuitable nodes.

exit status: 0 every job completed; 1 some did not (no node left to run them);
2 usage or input error (nothing was started); 130/143/129 interrupted by
SIGINT/SIGTERM/SIGHUP; 141 stdout was closed.
"""


class UsageError(Exception):
    """A mistake in the command line or its input files; exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


class Plan:
    """Everything a run needs, checked and resolved."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def build_parser():
    parser = _Parser(
        prog="clstr",
        description="Run shell commands (jobs) in parallel on a set of machines "
                    "(nodes) over ssh; the jobs' output is merged into clstr's.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", "-V", action="version", version="clstr " + __version__)

    nodes = parser.add_argument_group(
        "nodes", "Where jobs run.  List a host N times to give it N slots.")
    nodes.add_argument("--node", "-n", metavar="HOST", nargs="+", action="append", default=[],
                       help="hosts to use ([user@]host, ranges like lab[01-40])")
    nodes.add_argument("--node-file", "-N", metavar="FILE", nargs="+", action="append",
                       default=[], help="files listing hosts, one per line (# comments)")
    nodes.add_argument("--max-nodes", "-m", metavar="N", type=_count, default=0,
                       help="run at most N jobs at once (0: one per slot; default 0)")
    nodes.add_argument("--max-node-uses", "-u", metavar="N", type=_count, default=0,
                       help="a slot runs at most N jobs, then retires (0: unlimited)")

    jobs = parser.add_argument_group(
        "jobs", "What to run: shell commands, run by the node's login shell.")
    jobs.add_argument("--job", "-j", metavar="COMMAND", action="append", default=[],
                      help="a command to run (may be repeated)")
    jobs.add_argument("--job-file", "-J", metavar="FILE", nargs="+", action="append",
                      default=[], help="files of commands, one per line; a named pipe "
                      "such as <(...), or - for stdin; read as the run goes")
    jobs.add_argument("--on-each-node", "-E", metavar="COMMAND",
                      help="run COMMAND once on every node (not with --job/--job-file)")

    failures = parser.add_argument_group(
        "failures", "By default, as in clstr 0.1.0, any non-zero exit of ssh retires "
        "the node and the job runs elsewhere.")
    failures.add_argument("--job-failure", choices=("node", "job"), default="node",
                          help="what a job's own non-zero exit means: 'node' (default) "
                          "retires the node and reruns the job elsewhere; 'job' marks "
                          "only the job failed")
    failures.add_argument("--max-attempts", metavar="N", type=_count, default=0,
                          help="give a job up after it failed on N nodes (0: never, "
                          "the default, so node-filtering jobs work)")
    failures.add_argument("--timeout", metavar="SECONDS", type=_seconds,
                          help="kill a job (on the node too) that runs longer; it is "
                          "reported failed and not rerun")
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
    output.add_argument("--output-dir", metavar="DIR",
                        help="write job N's stdout and stderr to DIR/N.out and DIR/N.err "
                        "(complete files only) and an index to DIR/index.tsv")
    output.add_argument("--stdout", "-o", metavar="FILE", nargs="?", const=os.devnull,
                        help="write jobs' stdout to FILE (no FILE: discard it)")
    output.add_argument("--stderr", "-e", metavar="FILE", nargs="?", const=os.devnull,
                        help="write jobs' stderr to FILE (no FILE: discard it)")

    watching = parser.add_argument_group("watching")
    watching.add_argument("--dry-run", action="store_true",
                          help="print the ssh command lines that would run, one per "
                          "line, and start nothing")
    watching.add_argument("--verbose", "-v", action="count", default=0,
                          help="report retired nodes and jobs not completed "
                          "(-vv lists the jobs)")
    watching.add_argument("--status", "-s", action="store_true",
                          help="show a live status line when stderr is a terminal")
    watching.add_argument("--active-nodes", "-A", metavar="FILE",
                          help="keep FILE listing which node runs which job")

    ssh = parser.add_argument_group("ssh")
    ssh.add_argument("--ssh-command", metavar="CMD", default="ssh",
                     help="the ssh client and its arguments, split like a shell "
                     "does (default: ssh), e.g. 'ssh -F ./ssh_config'")
    ssh.add_argument("--ssh-option", "-O", metavar="OPTION", action="append", default=[],
                     help="an ssh -o option, e.g. -O User=alice (overrides clstr's "
                     "defaults; may be repeated)")
    ssh.add_argument("--multiplex", dest="multiplex", action="store_true", default=None,
                     help="share one ssh connection (ControlMaster) per host among its "
                     "jobs: much faster for many short jobs (default, except with -E)")
    ssh.add_argument("--no-multiplex", dest="multiplex", action="store_false",
                     help="one ssh connection per job")
    ssh.add_argument("--max-sessions", metavar="N", type=_count, default=10,
                     help="jobs sharing one connection at most; match sshd's "
                     "MaxSessions (default 10)")
    ssh.add_argument("--connect-timeout", metavar="SECONDS", type=_seconds, default=5.0,
                     help="give up on a node that has not answered in time (default 5)")
    ssh.add_argument("--alive-interval", metavar="SECONDS", type=_seconds, default=5.0,
                     help="probe a quiet connection this often; 3 probes unanswered "
                     "mean a hung node (default 5, so about 15 s)")
    return parser


def _count(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number: %r" % text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative: %r" % text)
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0: %r" % text)
    return value


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
    if not hosts:
        raise UsageError("no nodes given: use --node HOST or --node-file FILE")
    return hosts


def _open_output(path, option, default_fd):
    if path is None:
        return default_fd
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    except OSError as error:
        raise UsageError("%s: cannot write %s: %s" % (option, path, error.strerror))


def _ssh_settings(args):
    from .ssh import SshSettings
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


def _joblog(args):
    """The open joblog and, with --resume, a predicate for jobs it shows done."""
    from .records import Joblog, JoblogError, completed_in_joblog, job_key
    if args.resume and not args.joblog:
        raise UsageError("--resume needs --joblog FILE")
    if not args.joblog:
        return None, None
    try:
        skip = None
        if args.resume:
            done = completed_in_joblog(args.joblog)
            skip = lambda job: job_key(job) in done  # noqa: E731
        return Joblog(args.joblog, resume=args.resume), skip
    except JoblogError as error:
        raise UsageError(str(error))


def make_plan(argv):
    """Parse ``argv`` into a Plan, the job feed and the joblog.  Raises
    UsageError."""
    from .jobs import JobFeed, JobInputError, open_job_file
    args = build_parser().parse_args(argv)
    job_files = _flatten(args.job_file)
    if args.on_each_node is not None and (args.job or job_files):
        raise UsageError("--on-each-node cannot be combined with --job or --job-file")
    if args.on_each_node is None and not args.job and not job_files:
        raise UsageError("no jobs given: use --job, --job-file or --on-each-node")
    if job_files.count("-") > 1:
        raise UsageError("--job-file: stdin (-) given more than once")
    if "-" in job_files and "-" in _flatten(args.node_file):
        raise UsageError("--node-file and --job-file cannot both read stdin (-)")
    if args.group and args.output_dir:
        raise UsageError("--group and --output-dir cannot be combined")
    if args.output_dir:
        try:
            os.makedirs(args.output_dir, exist_ok=True)
        except OSError as error:
            raise UsageError("--output-dir: cannot create %s: %s" % (args.output_dir,
                                                                   error.strerror))
    hosts = _hosts(args)
    ssh = _ssh_settings(args)
    sources = []
    try:
        for path in job_files:
            sources.append(open_job_file(path))
    except JobInputError as error:
        for source in sources:
            source.close()
        raise UsageError(str(error))
    joblog, skip = _joblog(args)
    feed = JobFeed([os.fsencode(job) for job in args.job], sources, skip)
    pinned = args.on_each_node is not None
    if pinned:
        distinct = list(dict.fromkeys(hosts))
        feed.add_pinned(os.fsencode(args.on_each_node), distinct)
    plan = Plan(
        hosts=hosts, pinned=pinned, ssh=ssh,
        # Once per node, a master would cost a connection and save nothing.
        multiplex=not pinned if args.multiplex is None else args.multiplex,
        sessions_per_master=args.max_sessions or 10, max_nodes=args.max_nodes,
        max_node_uses=args.max_node_uses, verbose=args.verbose, status=args.status,
        tag=args.tag, group=args.group, output_dir=args.output_dir, dry_run=args.dry_run,
        max_attempts=args.max_attempts, job_failure=args.job_failure, timeout=args.timeout,
        retry_nodes=args.retry_nodes, exec_words=None,
        active_nodes=args.active_nodes,
        stdout_fd=_open_output(args.stdout, "--stdout", 1),
        stderr_fd=_open_output(args.stderr, "--stderr", 2))
    return plan, feed, joblog


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
    argv = sys.argv[1:] if argv is None else argv
    try:
        plan, feed, joblog = make_plan(argv)
    except UsageError as error:
        sys.stderr.write("clstr: error: %s (see clstr --help)\n" % error)
        return 2
    if plan.dry_run:
        from .dryrun import dry_run_lines
        try:
            for line in dry_run_lines(plan, feed):
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            return 141
        return 0
    raise_open_file_limit()
    from .runner import Runner
    return Runner(plan, feed, joblog).run()
