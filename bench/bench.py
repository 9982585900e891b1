"""clstr against its peers, measured in one run on a loopback sshd cluster.

    python3 bench/bench.py [--reps N] [--quick] [--no-install] [--out FILE]

Starts the loopback cluster the tests use, installs the peers if they are
missing (GNU parallel, pdsh, pssh, ClusterShell from Debian; clstr 0.1.0 from
PyPI into a throwaway venv), and times each scenario R times.  It prints one
table of medians, min-max and ratios (peer time / clstr time, so above 1 means
clstr is faster) and writes it, with the machine it ran on, to
bench/results-latest.md.  Every tool logs in as the cluster's unprivileged
user; only 127.0.0.1 is contacted.

Every peer runs as its manual recommends, and the run proves it: the sshd
logs at VERBOSE, so each repetition counts the authentications ("Accepted
publickey") and remote commands ("Starting session: command") it caused.
Each tool states what those counts must be for its configuration (400 jobs
over 8 masters: about 8 logins, not 400; every job run exactly once: one
command per job, plus any a tool runs for itself); a repetition that
contradicts its configuration fails the whole bench run.
"""

import argparse
import fcntl
import hashlib
import itertools
import os
import platform
import pty
import pwd
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import termios
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)

from scale import descendants, pss_kib, rss_kib  # noqa: E402

from cluster import LoopbackCluster  # noqa: E402

TIMEOUT = 300
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


class VerboseCluster(LoopbackCluster):
    """The tests' loopback cluster with sshd at LogLevel VERBOSE, which logs
    every session's command: the evidence of what each tool really did."""

    def _write_sshd_config(self):
        super()._write_sshd_config()
        path = self.path("sshd_config")
        with open(path) as config:
            text = config.read()
        with open(path, "w") as config:
            config.write(text.replace("LogLevel INFO", "LogLevel VERBOSE"))
            # scp (clush --copy) speaks SFTP since OpenSSH 9.0.
            if os.path.exists(SFTP_SERVER):
                config.write("Subsystem sftp %s\n" % SFTP_SERVER)


class SshdCounter:
    """Counts what the sshd logged since ``mark()``: authentications and
    remote commands (sessions).

    sshd's log lags behind the sessions: a connection's session process
    hands its lines to its monitor process, which writes them when it next
    runs.  So ``counts()`` first waits for the connections opened since
    ``mark()`` to close, which their monitors do only after writing every
    line (connections that stay open, a floor's pre-started masters, were
    there before ``mark()``)."""

    SETTLE_TIMEOUT = 15

    def __init__(self, cluster):
        self._cluster = cluster
        self._path = cluster.path("sshd.log")
        self._offset = 0
        self._serving = set()

    def mark(self):
        self._offset = os.path.getsize(self._path)
        self._serving = set(descendants(self._cluster.sshd_pid))

    def counts(self):
        deadline = time.monotonic() + self.SETTLE_TIMEOUT
        while (set(descendants(self._cluster.sshd_pid)) - self._serving
               and time.monotonic() < deadline):
            time.sleep(0.05)
        with open(self._path, "rb") as log:
            log.seek(self._offset)
            text = log.read()
        # A remote command, or a subsystem (scp's sftp-server).
        return text.count(b"Accepted publickey"), (text.count(b"Starting session: command")
                                                   + text.count(b"Starting session: subsystem"))


class Expect:
    """What a tool's configuration implies for one repetition: authentications
    and sessions, each a (low, high) range (high None: no limit).
    ``commands_per_login``: sessions a tool runs for itself on each login, on
    top of ``sessions`` (clstr's login shell probe); they are allowed, not
    required, since a run may end before a late master asks."""

    def __init__(self, auths, sessions, commands_per_login=0):
        self.auths = auths
        self.sessions = sessions
        self.commands_per_login = commands_per_login

    def problem(self, auths, sessions):
        sessions_low, sessions_high = self.sessions
        if sessions_high is not None:
            sessions_high += self.commands_per_login * auths
        for name, value, (low, high) in (("logins", auths, self.auths),
                                         ("remote commands", sessions,
                                          (sessions_low, sessions_high))):
            if value < low or (high is not None and value > high):
                return "%d %s, expected %s" % (value, name, low if low == high else "%d-%s" % (
                    low, "" if high is None else high))
        return None


def masters_up(masters):
    """Logins of a tool that starts ``masters`` masters and needs only one
    to be up: a short run can end before a late one has logged in."""
    return (1, masters)


def exactly(count):
    return (count, count)


class Result:
    """Wall times of one tool in one scenario (None: it failed)."""

    def __init__(self, scenario, tool, times, note="", jobs=None, reference=False, counts=()):
        self.scenario = scenario
        self.tool = tool
        self.times = times
        self.note = note
        self.jobs = jobs
        self.reference = reference
        self.counts = counts  # (logins, remote commands) per repetition
        self.extra = ""

    @property
    def median(self):
        return statistics.median(self.times) if self.times else None


class Terminal:
    """A pseudo-terminal that becomes the controlling terminal of a child
    (clstr 0.1.0 opens /dev/tty and crashes without one), drained by a thread
    so the child never blocks writing to it."""

    def __init__(self):
        self.master, self.slave = pty.openpty()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        while True:
            try:
                if not os.read(self.master, 65536):
                    return
            except OSError:
                return

    def make_controlling(self):
        os.setsid()
        fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)

    def close(self):
        os.close(self.slave)
        os.close(self.master)


class ContradictedConfiguration(Exception):
    """A tool's logins or remote commands contradict its configuration."""


def measure(argv, reps, check=None, env=None, stdin_path=None, timeout=TIMEOUT, tty=False,
            counter=None, expect=None, sampler=None, cwd=None):
    """Run ``argv`` ``reps`` times; returns (times, note, counts).
    ``check(stdout)`` returns an error text when the output is wrong.  ``tty``:
    run it with a terminal for stdin, stderr and /dev/tty.  ``counter`` and
    ``expect``: the sshd's counts per repetition, and what they must be.
    ``sampler(popen)``: called with the running process, in a thread.
    ``cwd``: where it runs (None: here)."""
    times, note, counts = [], "", []
    for _ in range(reps):
        if counter:
            counter.mark()
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        terminal = Terminal() if tty else None
        extra = {}
        if terminal:
            extra = dict(stdin=terminal.slave, stderr=terminal.slave,
                         preexec_fn=terminal.make_controlling)
        else:
            extra = dict(stdin=stdin, stderr=subprocess.PIPE)
        started = time.monotonic()
        try:
            done = _run(argv, timeout, env, dict(extra, cwd=cwd), sampler)
        except subprocess.TimeoutExpired:
            return [], "timed out after %d s" % timeout, counts
        except OSError as error:
            return [], "cannot run: %s" % error, counts
        finally:
            if stdin_path:
                stdin.close()
            if terminal:
                terminal.close()
        elapsed = time.monotonic() - started
        problem = check(done.stdout) if check else None
        if done.returncode != 0 and not problem:
            problem = "exit %d: %s" % (done.returncode, (done.stderr or b"").decode(
                errors="replace").strip().splitlines()[-1:])
        if problem:
            return [], problem, counts
        if counter:
            counts.append(counter.counts())
            contradiction = expect and expect.problem(*counts[-1])
            if contradiction:
                raise ContradictedConfiguration("%s: %s" % (" ".join(map(str, argv[:4])),
                                                            contradiction))
        times.append(elapsed)
    return times, note, counts


def _run(argv, timeout, env, extra, sampler):
    """subprocess.run, with ``sampler(popen)`` watching it from a thread."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, **extra) as process:
        watcher = None
        if sampler:
            watcher = threading.Thread(target=sampler, args=(process,), daemon=True)
            watcher.start()
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        if watcher:
            watcher.join(timeout=10)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def count_lines(expected):
    def check(stdout):
        lines = len(stdout.splitlines())
        return None if lines == expected else "%d of %d answered" % (lines, expected)
    return check


# -- the peers ----------------------------------------------------------------

def install_peers(allowed):
    """Debian peers and clstr 0.1.0, where missing; returns the venv dir."""
    wanted = {"parallel": "parallel", "pdsh": "pdsh", "parallel-ssh": "pssh",
              "clush": "clustershell", "ping": "iputils-ping"}
    missing = [package for command, package in wanted.items() if not shutil.which(command)]
    if missing and allowed and os.geteuid() == 0:
        print("installing %s" % " ".join(missing), flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdin=subprocess.DEVNULL,
                       timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq"] + missing, env=env,
                       stdin=subprocess.DEVNULL, timeout=900, capture_output=True)
    venv = os.path.join(tempfile.gettempdir(), "clstr-bench-0.1.0")
    if allowed and not os.path.exists(os.path.join(venv, "bin", "clstr")):
        print("installing clstr 0.1.0 from PyPI into %s" % venv, flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], timeout=300, capture_output=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "clstr==0.1.0"],
                       timeout=600, capture_output=True)
    return venv


def ssh_wrapper_dir(cluster, work):
    """A directory with an ``ssh`` that uses the cluster's config, for tools
    that can only call plain ``ssh`` (clstr 0.1.0, pdsh), and a ``ping`` for
    clstr 0.1.0, which pings every node first (and hangs for good if ping is
    missing): node names exist only in the ssh config, so it pings the
    address they stand for."""
    directory = os.path.join(work, "bin")
    os.makedirs(directory)
    # $CLSTR_BENCH_SSH_OPTIONS: extra options for one scenario (unquoted on
    # purpose: words).
    wrappers = {"ssh": "exec /usr/bin/ssh -F %s $CLSTR_BENCH_SSH_OPTIONS \"$@\""
                % shlex.quote(cluster.ssh_config)}
    ping = shutil.which("ping")
    if ping:
        wrappers["ping"] = "exec %s -c 1 -w 1 127.0.0.1" % shlex.quote(ping)
    for name, body in wrappers.items():
        path = os.path.join(directory, name)
        with open(path, "w") as handle:
            handle.write("#!/bin/sh\n%s\n" % body)
        os.chmod(path, 0o755)
    return directory


class Tools:
    """Command lines for every tool, pointed at the loopback cluster."""

    def __init__(self, cluster, work, venv):
        self.cluster = cluster
        self.work = work
        self.ssh = cluster.ssh_command
        self.pyz = os.path.join(work, "clstr.pyz")
        subprocess.run(["bash", os.path.join(REPO, "build_zipapp.sh"), self.pyz], check=True,
                       capture_output=True, timeout=60)
        self.old_clstr = os.path.join(venv, "bin", "clstr")
        self.counter = SshdCounter(cluster)
        # The wrapper directory puts a one-word `ssh` that uses the cluster's
        # config first in PATH: GNU parallel -M starts its masters by exec'ing
        # its --ssh value as one program name, so a multi-word --ssh would
        # silently leave -M off.
        self.env = dict(os.environ, PATH=ssh_wrapper_dir(cluster, work) + ":" + os.environ["PATH"],
                        HOME=work)
        # GNU parallel asks for a citation once; say it was seen.
        os.makedirs(os.path.join(work, ".parallel"), exist_ok=True)
        open(os.path.join(work, ".parallel", "will-cite"), "w").close()

    def have(self, command):
        return shutil.which(command, path=self.env["PATH"]) is not None

    def clstr(self, *args):
        return [sys.executable, self.pyz, "--ssh-command", self.ssh] + list(args)

    def clstr_010(self, *args):
        # Run with tty=True: 0.1.0 opens /dev/tty unconditionally.
        if not (os.path.exists(self.old_clstr) and self.have("ping")):
            return None
        return [self.old_clstr] + list(args)

    def parallel(self, hosts, *args, slots=1):
        """GNU parallel over ``hosts`` with the one-word ``ssh`` from the
        wrapper directory (see above)."""
        if not self.have("parallel"):
            return None
        return ["parallel", "--will-cite", "--ssh", "ssh",
                "-S", ",".join("%d/%s" % (slots, host) for host in hosts)] + list(args)

    def pdsh(self, hosts, command):
        if not self.have("pdsh"):
            return None
        return ["env", "PDSH_RCMD_TYPE=ssh", "PDSH_SSH_ARGS=-F %s -x %%h" % self.cluster.ssh_config,
                "pdsh", "-f", str(len(hosts)), "-w", ",".join(hosts), command]

    def pssh(self, hosts, command):
        if not self.have("parallel-ssh"):
            return None
        return ["parallel-ssh", "-x", "-F %s" % self.cluster.ssh_config, "-p", str(len(hosts)),
                "-i", "-H", " ".join(hosts), command]

    def pdcp(self, hosts, source, target):
        """pdcp through ssh (pdsh's rcmd module), which runs pdcp on each
        node too (here the same machine's)."""
        if not self.have("pdcp"):
            return None
        return ["env", "PDSH_RCMD_TYPE=ssh", "PDSH_SSH_ARGS=-F %s -x %%h" % self.cluster.ssh_config,
                "pdcp", "-f", str(len(hosts)), "-w", ",".join(hosts), source, target]

    def clush_copy(self, hosts, source, target):
        if not self.have("clush"):
            return None
        return ["clush", "-f", str(len(hosts)), "-o", "-F %s" % self.cluster.ssh_config,
                "-w", ",".join(hosts), "--copy", source, "--dest", target]

    def clush(self, hosts, command):
        if not self.have("clush"):
            return None
        return ["clush", "-f", str(len(hosts)), "-o", "-F %s" % self.cluster.ssh_config,
                "-w", ",".join(hosts), command]


# --clstr-only: skip every other tool (the tests' smoke run).
CLSTR_ONLY = []


def run_one(results, scenario, tool, argv, reps, env, jobs=None, reference=False, **kwargs):
    if CLSTR_ONLY and not tool.startswith("clstr"):
        return None
    if argv is None:
        results.append(Result(scenario, tool, [], "n/a (not installed)", jobs, reference))
        return None
    print("  %-34s" % tool, end="", flush=True)
    times, note, counts = measure(argv, reps, env=env, **kwargs)
    result = Result(scenario, tool, times, note, jobs, reference, counts)
    print(_summary(result), flush=True)
    results.append(result)
    return result


def _summary(result):
    """What the progress output says of a measured tool."""
    shown = ("%.2f s" % result.median) if result.times else result.note
    if result.counts:
        shown += "  (%d logins, %d remote commands)" % result.counts[-1]
    return shown


def run_interleaved(results, scenario, runs, reps):
    """Like run_one for each of ``runs`` ((tool, argv, env, jobs, reference,
    options) each), a repetition of each in turn: on a shared machine a slow
    spell then falls on every tool of the row alike, not on one.  Returns
    their Results by tool."""
    runs = [run for run in runs if not CLSTR_ONLY or run[0].startswith("clstr")]
    measured = {tool: ([], "", []) for tool, *_ in runs}
    for _ in range(reps):
        for tool, argv, env, _, _, options in runs:
            times, note, counts = measured[tool]
            if argv is None or note:
                continue
            more, note, more_counts = measure(argv, 1, env=env, **options)
            measured[tool] = (times + more, note, counts + more_counts)
    found = {}
    for tool, argv, _, jobs, reference, _ in runs:
        times, note, counts = measured[tool]
        if argv is None:
            note = "n/a (not installed)"
        result = Result(scenario, tool, times if not note else [], note, jobs, reference,
                        counts)
        print("  %-34s%s" % (tool, _summary(result)), flush=True)
        results.append(result)
        found[tool] = result
    return found


# -- scenarios ----------------------------------------------------------------

def _job_file(tools, name, count):
    path = os.path.join(tools.work, name)
    with open(path, "w") as handle:
        handle.write("true\n" * count)
    return path


def _masters(hosts, slots=1, per_master=10):
    """How many ControlMasters a host list needs: one per up to
    ``per_master`` slots of a host."""
    return len(hosts) * ((slots + per_master - 1) // per_master)


def shared_logins(hosts, slots):
    """Logins a tool sharing one master per host may make: GNU parallel -M
    starts jobs before their host's master is up, and those log in on their
    own, so allow up to two such jobs per slot above the masters; far below
    one login per job all the same."""
    return (len(hosts), len(hosts) + 2 * slots * len(hosts))


def many_short_jobs(tools, results, reps, jobs_count):
    scenario = "%d `true` jobs, 8 nodes" % jobs_count
    print(scenario, flush=True)
    hosts = tools.cluster.nodes(8)
    jobs = _job_file(tools, "true-jobs", jobs_count)
    targets = os.path.join(tools.work, "targets")
    with open(targets, "w") as handle:
        handle.write("".join(hosts[n % 8] + "\n" for n in range(jobs_count)))
    env = tools.env
    nodes = [arg for host in hosts for arg in ("-n", host)]
    counted = dict(counter=tools.counter)
    every_job = exactly(jobs_count)
    # One login per connection: a job each, or a master each.
    direct = Expect(exactly(jobs_count), every_job)
    shared = Expect(shared_logins(hosts, 1), every_job)
    # clstr's masters each run one command of their own: the login shell probe.
    run_one(results, scenario, "clstr", tools.clstr(*nodes, "-J", jobs), reps, env, jobs_count,
            reference=True, expect=Expect(masters_up(len(hosts)), every_job, 1), **counted)
    run_one(results, scenario, "clstr --no-multiplex",
            tools.clstr("--no-multiplex", *nodes, "-J", jobs), reps, env, jobs_count,
            expect=direct, **counted)
    run_one(results, scenario, "GNU parallel -S", tools.parallel(hosts), reps, env, jobs_count,
            stdin_path=jobs, expect=direct, **counted)
    # parallel -M keeps each master alive with a remote command of its own.
    run_one(results, scenario, "GNU parallel -S -M", tools.parallel(hosts, "-M"), reps, env,
            jobs_count, stdin_path=jobs, **counted,
            expect=Expect(shared.auths, (jobs_count + len(hosts), jobs_count + 2 * len(hosts))))
    run_one(results, scenario, "clstr 0.1.0", tools.clstr_010(*nodes, "-J", jobs), reps, env,
            jobs_count, tty=True, expect=direct, **counted)
    run_one(results, scenario, "xargs -P 8 + ssh (floor)",
            ["xargs", "-P", "8", "-I{}", "ssh", "-F", tools.cluster.ssh_config, "{}", "true"],
            reps, env, jobs_count, stdin_path=targets, expect=direct, **counted)
    sockets = tempfile.mkdtemp(prefix="cm-", dir="/tmp")
    try:
        for host in hosts:
            subprocess.run(["ssh", "-F", tools.cluster.ssh_config, "-o", "ControlMaster=yes",
                            "-o", "ControlPersist=120", "-o", "ControlPath=%s/%%n" % sockets,
                            "-N", host], timeout=60, stdin=subprocess.DEVNULL)
        run_one(results, scenario, "xargs -P 8 + masters (floor)",
                ["xargs", "-P", "8", "-I{}", "ssh", "-F", tools.cluster.ssh_config,
                 "-o", "ControlMaster=no", "-o", "ControlPath=%s/%%n" % sockets, "{}", "true"],
                reps, env, jobs_count, stdin_path=targets,
                expect=Expect(exactly(0), every_job), **counted)
        # The same floor paying for its masters, as clstr and parallel -M do:
        # with OpenSSH's default key exchange each costs ~0.1 s of CPU.
        fresh = os.path.join(sockets, "fresh")
        os.mkdir(fresh)
        ssh = "ssh -F %s -o ControlPath=%s/%%n" % (shlex.quote(tools.cluster.ssh_config),
                                                  shlex.quote(fresh))
        script = ("for h in %s; do %s -o ControlMaster=yes -o ControlPersist=60 -N $h & done; "
                  "wait; xargs -P 8 -I{} %s -o ControlMaster=no {} true; s=$?; "
                  "for h in %s; do %s -O exit $h 2>/dev/null; done; exit $s"
                  % (" ".join(hosts), ssh, ssh, " ".join(hosts), ssh))
        run_one(results, scenario, "same, starting the masters", ["sh", "-c", script], reps, env,
                jobs_count, stdin_path=targets,
                expect=Expect(exactly(len(hosts)), every_job), **counted)
    finally:
        for host in hosts:
            subprocess.run(["ssh", "-F", tools.cluster.ssh_config, "-o",
                            "ControlPath=%s/%%n" % sockets, "-O", "exit", host],
                           timeout=30, capture_output=True)
        shutil.rmtree(sockets, ignore_errors=True)


class MemorySampler:
    """Peak RSS of a run's own process, and peak PSS of the ssh processes
    working for it: its children, and the ControlMasters it started (they
    leave the process tree when they go to the background).  ``cpu_self``:
    the run's own CPU seconds (user + system, not its children's) at the
    last sample, a few ms before it exited."""

    def __init__(self, interval=0.2, helpers=True):
        self.interval = interval
        self.helpers = helpers
        self.peak_self = 0
        self.peak_children = 0
        self.cpu_self = 0.0

    def __call__(self, process):
        started = time.time()
        while process.poll() is None:
            own = rss_kib(process.pid)
            self.cpu_self = max(self.cpu_self, cpu_seconds(process.pid))
            self.peak_self = max(self.peak_self, own)
            if self.helpers:
                helpers = set(descendants(process.pid)) | set(masters_since(started))
                self.peak_children = max(self.peak_children,
                                         sum(pss_kib(p) for p in helpers))
            time.sleep(self.interval)


def cpu_seconds(pid):
    """User + system CPU seconds of process ``pid`` itself (0 if gone)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def masters_since(started):
    """Pids of ControlMasters (ssh -M / ControlMaster=yes) started after
    ``started`` (seconds since the epoch)."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as handle:
        boot = next(int(line.split()[1]) for line in handle if line.startswith("btime"))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                words = handle.read().split(b"\0")
            with open("/proc/%s/stat" % entry) as handle:
                start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        except (OSError, ValueError, IndexError):
            continue
        if not words or os.path.basename(words[0]) != b"ssh":
            continue
        if b"ControlMaster=yes" not in words and b"-MT" not in words:
            continue
        if boot + start_ticks / ticks >= started - 1:
            found.append(int(entry))
    return found


def many_slots(tools, results, reps, jobs_count):
    scenario = "%d `true` jobs, 8 nodes x 4 slots" % jobs_count
    print(scenario, flush=True)
    hosts = tools.cluster.nodes(8)
    jobs = _job_file(tools, "true-jobs-32", jobs_count)
    nodes = [arg for host in hosts * 4 for arg in ("-n", host)]
    memory = MemorySampler()
    result = run_one(results, scenario, "clstr", tools.clstr(*nodes, "-J", jobs), reps,
                     tools.env, jobs_count, reference=True, counter=tools.counter,
                     expect=Expect(masters_up(_masters(hosts, 4)), exactly(jobs_count), 1),
                     sampler=memory)
    if result and result.times:
        result.extra = "clstr peak RSS %.1f MiB, its ssh processes %.1f MiB PSS" % (
            memory.peak_self / 1024, memory.peak_children / 1024)
        print("    " + result.extra, flush=True)
    # parallel -M: one master per host (its -S 4/host shares it among 4 jobs).
    run_one(results, scenario, "GNU parallel -S 4/host -M",
            tools.parallel(hosts, "-M", slots=4), reps, tools.env, jobs_count, stdin_path=jobs,
            counter=tools.counter,
            expect=Expect(shared_logins(hosts, 4),
                          (jobs_count + len(hosts), jobs_count + 4 * len(hosts))))


def workers_over_ssh(tools, results, reps, jobs_count, slots_jobs_count):
    """--workers (a worker per slot, a session through its host's master)
    against clstr's default (a session per job), 8 nodes with one slot each
    and with 4; each tool's logins and remote sessions counted.  Once for a
    login user whose shell is /bin/sh (dash: each job is then `sh -c` from a
    worker in bash) and once for one whose shell is bash (each job a fork of
    the worker), as most users' is."""
    shells = [("sh", "node")]
    if tools.cluster.bash_user:
        shells.append(("bash", "bashnode"))
    for (shell, prefix), (slots, count) in itertools.product(
            shells, ((1, jobs_count), (4, slots_jobs_count))):
        hosts = tools.cluster.nodes(8, prefix=prefix)
        scenario = "%d `true` jobs, 8 nodes x %d slot%s, workers, login shell %s" % (
            count, slots, "s" if slots > 1 else "", shell)
        print(scenario, flush=True)
        jobs = _job_file(tools, "true-jobs-workers-%d" % count, count)
        nodes = [arg for host in hosts * slots for arg in ("-n", host)]
        masters = _masters(hosts, slots)
        # Both sampled alike, their own RSS only (walking /proc for the
        # helpers too took CPU from the runs of one of them).
        memory = {tool: MemorySampler(helpers=False) for tool in ("clstr", "clstr --workers")}
        found = run_interleaved(results, scenario, [
            ("clstr", tools.clstr(*nodes, "-J", jobs), tools.env, count, True,
             dict(counter=tools.counter, sampler=memory["clstr"],
                  expect=Expect(masters_up(masters), exactly(count), 1))),
            ("clstr --workers", tools.clstr("--workers", *nodes, "-J", jobs), tools.env, count,
             False, dict(counter=tools.counter, sampler=memory["clstr --workers"],
                         # A session per slot, not per job (a short run's
                         # late slots may get no job: --quick).
                         expect=Expect(masters_up(masters), (1, len(hosts) * slots), 1)))],
            reps)
        for tool, result in found.items():
            if result.times:
                result.extra = "clstr peak RSS %.1f MiB" % (memory[tool].peak_self / 1024)
                print("    %s: %s" % (tool, result.extra), flush=True)


def once_on_each_node(tools, results, reps, count):
    scenario = "`uname -n` once on %d nodes" % count
    print(scenario, flush=True)
    hosts = tools.cluster.nodes(count)
    env = tools.env
    answered = count_lines(count)
    node_file = os.path.join(tools.work, "nodes-%d" % count)
    with open(node_file, "w") as handle:
        handle.write("\n".join(hosts) + "\n")
    counted = dict(counter=tools.counter, expect=Expect(exactly(count), exactly(count)))
    run_one(results, scenario, "clstr -E", tools.clstr("-N", node_file, "-E", "uname -n"), reps,
            env, reference=True, check=answered, **counted)
    run_one(results, scenario, "pdsh", tools.pdsh(hosts, "uname -n"), reps, env, check=answered,
            **counted)
    run_one(results, scenario, "pssh", tools.pssh(hosts, "uname -n"), reps, env,
            check=lambda out: count_lines(count)(b"\n".join(
                line for line in out.splitlines() if b"[SUCCESS]" in line)), **counted)
    run_one(results, scenario, "clush", tools.clush(hosts, "uname -n"), reps, env, check=answered,
            **counted)
    parallel = tools.parallel(hosts, "--nonall", "-j", str(count), "uname -n")
    run_one(results, scenario, "GNU parallel --nonall", parallel, reps, env, check=answered,
            **counted)
    run_one(results, scenario, "clstr 0.1.0",
            tools.clstr_010("-N", node_file, "--on-each-node", "uname -n"), reps, env,
            check=answered, tty=True, **counted)


def send_a_file(tools, results, reps, megabytes, count):
    """--send (-E true: what pdcp does) against pdcp and clush --copy, one
    file to every node.  The loopback nodes share one home, so every tool
    writes its own file there, 30 times over; each repetition checks the
    copy that stayed."""
    scenario = "a %d MB file to %d nodes" % (megabytes, count)
    print(scenario, flush=True)
    hosts = tools.cluster.nodes(count)
    source = os.path.join(tools.work, "sent.bin")
    with open(source, "wb") as handle:
        for _ in range(megabytes):
            handle.write(os.urandom(1 << 20))
    os.chmod(source, 0o644)
    with open(source, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    home = pwd.getpwnam(tools.cluster.user).pw_dir

    def arrived(name):
        def check(stdout):
            with open(os.path.join(home, name), "rb") as handle:
                copied = hashlib.sha256(handle.read()).hexdigest()
            return None if copied == digest else "%s differs from the file sent" % name
        return check

    # One login a node for each tool: clstr's masters carry its copy and
    # its `true` (and a login shell probe); pdcp and clush --copy run one
    # remote program a node (pdcp's server, scp's sftp-server).
    run_one(results, scenario, "clstr -E true --send",
            tools.clstr("-n", *hosts, "--send", "sent.bin", "-E", "true"), reps, tools.env,
            reference=True, cwd=tools.work, check=arrived("sent.bin"), counter=tools.counter,
            expect=Expect(exactly(count), exactly(2 * count), 1))
    run_one(results, scenario, "pdcp", tools.pdcp(hosts, source, home + "/pdcp.bin"), reps,
            tools.env, check=arrived("pdcp.bin"), counter=tools.counter,
            expect=Expect(exactly(count), exactly(count)))
    run_one(results, scenario, "clush --copy",
            tools.clush_copy(hosts, source, home + "/clush.bin"), reps, tools.env,
            check=arrived("clush.bin"), counter=tools.counter,
            expect=Expect(exactly(count), exactly(count)))
    for name in ("sent.bin", "pdcp.bin", "clush.bin"):
        try:
            os.unlink(os.path.join(home, name))
        except FileNotFoundError:
            pass


def scheduler_overhead(tools, results, reps, jobs_count):
    scenario = "%d jobs, 32 slots, no network" % jobs_count
    print(scenario, flush=True)
    jobs = os.path.join(tools.work, "local-jobs")
    with open(jobs, "w") as handle:
        handle.write("".join(": job %d\n" % n for n in range(jobs_count)))
    slots = ["-n", "slot[01-32]"]
    # tests/fakessh stands in for ssh: it runs the remote command here with
    # sh, so clstr's wrapper runs and reports each job's end.  xargs runs the
    # same stand-in with `true` as the command: the same two execs a job.
    fakessh = os.path.join(REPO, "tests", "fakessh")
    run_one(results, scenario, "clstr (ssh = fakessh)",
            [sys.executable, tools.pyz, "--ssh-command", fakessh, "--no-multiplex", *slots,
             "-J", jobs], reps, tools.env, jobs_count, reference=True)
    # The same jobs from a template: ": job {}" and the numbers as input.
    numbers = os.path.join(tools.work, "local-numbers")
    with open(numbers, "w") as handle:
        handle.write("".join("%d\n" % n for n in range(jobs_count)))
    run_one(results, scenario, "clstr -j template (ssh = fakessh)",
            [sys.executable, tools.pyz, "--ssh-command", fakessh, "--no-multiplex", *slots,
             "-j", ": job {}", "::::", numbers], reps, tools.env, jobs_count)
    run_one(results, scenario, "xargs -P 32 fakessh",
            ["xargs", "-P", "32", "-I", "{}", fakessh, "--", "slot", "true"],
            reps, tools.env, jobs_count, stdin_path=jobs)
    # --workers through a local --exec (env starts each slot's worker): the
    # controller's own CPU per job, the 0.2 ms bar.
    sampler = MemorySampler(interval=0.02, helpers=False)
    result = run_one(results, scenario, "clstr --workers (exec = env)",
                     [sys.executable, tools.pyz, "--workers", "--exec", "env CLSTR_NODE={host}",
                      *slots, "-J", jobs], reps, tools.env, jobs_count, sampler=sampler)
    if result and result.times:
        result.extra = "clstr --workers: %.3f ms of clstr's own CPU per job, peak RSS %.1f MiB" % (
            sampler.cpu_self / jobs_count * 1000, sampler.peak_self / 1024)
        print("    " + result.extra, flush=True)


def dead_nodes(tools, results, reps, jobs_count):
    scenario = "%d jobs, 8 good + 4 refused + 2 silent nodes" % jobs_count
    print(scenario, flush=True)
    cluster = tools.cluster
    hosts = cluster.nodes(8) + cluster.dead_nodes(4) + cluster.silent_nodes(2)
    jobs = os.path.join(tools.work, "dead-jobs")
    with open(jobs, "w") as handle:
        handle.write("true\n" * jobs_count)
    nodes = [arg for host in hosts for arg in ("-n", host)]
    run_one(results, scenario, "clstr", tools.clstr("--connect-timeout", "2", *nodes, "-J", jobs),
            reps, tools.env, jobs_count, reference=True)
    run_one(results, scenario, "clstr --no-multiplex",
            tools.clstr("--no-multiplex", "--connect-timeout", "2", *nodes, "-J", jobs),
            reps, tools.env, jobs_count)
    # GNU parallel gets its documented remedy for dead hosts, --filter-hosts,
    # and a 2 s connect timeout like clstr's, through the one-word ssh.
    env = dict(tools.env, CLSTR_BENCH_SSH_OPTIONS="-o ConnectTimeout=2")
    run_one(results, scenario, "GNU parallel -S", tools.parallel(hosts), reps, env, jobs_count,
            stdin_path=jobs, timeout=120)
    run_one(results, scenario, "GNU parallel -S --filter-hosts",
            tools.parallel(hosts, "--filter-hosts"), reps, env, jobs_count, stdin_path=jobs,
            timeout=120)


def slurm(tools, results, reps, jobs_count):
    """clstr --slurm (a step per job, and --workers: a step per slot) against
    xargs -P + srun, all as steps inside one
    salloc on a throwaway one-node Slurm (tests/slurm_cluster.py); only
    where Slurm is installed (make test-slurm installs it) and as root."""
    if os.geteuid() != 0 or not all(shutil.which(p) for p in ("srun", "salloc", "slurmctld",
                                                                 "slurmd", "munged")):
        results.append(Result("%d `true` jobs through srun" % jobs_count, "clstr --slurm", [],
                              "n/a (Slurm not installed)"))
        return
    from slurm_cluster import NODE, NODES, LoopbackSlurm

    from clstr.transport.slurm import SRUN_TEMPLATE
    jobs = _job_file(tools, "srun-jobs", jobs_count)
    # One node with 4 tasks, and four nodes with one each (xargs then lets
    # srun place each step).
    for nodes, cpus, srun in (
            ([NODE], 4, SRUN_TEMPLATE.replace("{host}", NODE).split()),
            (list(NODES), 1, ["srun", "--nodes=1", "--ntasks=1", "--overlap", "--quiet"])):
        scenario = "%d `true` jobs through srun, %d node%s, 4 tasks" % (
            jobs_count, len(nodes), "s" if len(nodes) > 1 else "")
        print(scenario, flush=True)
        salloc = ["salloc", "--quiet", "-N%d" % len(nodes), "-n4"]
        with LoopbackSlurm(nodes=nodes, cpus=cpus) as cluster:
            env = dict(cluster.env(), PATH=tools.env["PATH"])
            run_interleaved(results, scenario, [
                ("clstr --slurm", salloc + [sys.executable, tools.pyz, "--slurm", "-J", jobs],
                 env, jobs_count, True, {}),
                # A worker per slot: 4 steps, not one per job (tests/slurm
                # counts them).
                ("clstr --slurm --workers",
                 salloc + [sys.executable, tools.pyz, "--slurm", "--workers", "-J", jobs], env,
                 jobs_count, False, {}),
                ("xargs -P 4 + srun", salloc + ["xargs", "-P", "4", "-I{}"] + srun + ["true"],
                 env, jobs_count, False, dict(stdin_path=jobs))], reps)


def start_up(tools, results, reps):
    scenario = "start-up (--version)"
    print(scenario, flush=True)
    # Both under this interpreter: `./clstr.pyz` would run whichever
    # python3 PATH finds first (here once a pyenv shim, 0.2 s by itself).
    run_one(results, scenario, "clstr.pyz --version (python3)",
            [sys.executable, tools.pyz, "--version"], reps, tools.env, reference=True)
    run_one(results, scenario, "python3 -c pass", [sys.executable, "-c", "pass"], reps,
            tools.env)


# -- the table ----------------------------------------------------------------

def table(results):
    lines = ["| scenario | tool | median s | min-max s | jobs/s | peer / clstr | logins | "
             "remote commands |",
             "|---|---|---|---|---|---|---|---|"]
    references = {r.scenario: r for r in results if r.reference}
    notes = []
    for result in results:
        reference = references.get(result.scenario)
        if not result.times:
            lines.append("| %s | %s | %s | | | | | |" % (result.scenario, result.tool,
                                                        result.note))
            continue
        ratio = ""
        if reference and reference.times and not result.reference:
            ratio = "%.2f" % (result.median / reference.median)
        rate = "%.0f" % (result.jobs / result.median) if result.jobs else ""
        logins = commands = ""
        if result.counts:
            logins = "%d" % statistics.median(c[0] for c in result.counts)
            commands = "%d" % statistics.median(c[1] for c in result.counts)
        lines.append("| %s | %s | %.3f | %.3f-%.3f | %s | %s | %s | %s |" % (
            result.scenario, result.tool, result.median, min(result.times), max(result.times),
            rate, ratio, logins, commands))
        if result.extra:
            notes.append("- %s, %s: %s" % (result.scenario, result.tool, result.extra))
    return "\n".join(lines + ([""] + notes if notes else []))


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return "%s; %d cores (%s); %s; Python %s; %s" % (
        platform.platform(), os.cpu_count(), model, ssh, platform.python_version(),
        time.strftime("%Y-%m-%d"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one small run of each (smoke)")
    parser.add_argument("--no-install", action="store_true", help="use only what is installed")
    parser.add_argument("--out", default=os.path.join(HERE, "results-latest.md"))
    parser.add_argument("--only", choices=("short", "slots", "each", "scheduler", "dead",
                                           "slurm", "startup", "workers", "send"),
                        action="append", help="run only these scenarios (repeatable)")
    parser.add_argument("--clstr-only", action="store_true",
                        help="time clstr alone, no peers (still checking its logins)")
    args = parser.parse_args()
    if args.clstr_only:
        CLSTR_ONLY.append(True)
    reps = 1 if args.quick else args.reps
    venv = install_peers(not args.no_install)
    results = []
    failed = None
    with VerboseCluster() as cluster:
        work = tempfile.mkdtemp(prefix="clstr-bench-")
        try:
            tools = Tools(cluster, work, venv)
            wanted = set(args.only or ("short", "slots", "each", "scheduler", "dead", "slurm",
                                       "startup", "workers", "send"))
            if "short" in wanted:
                many_short_jobs(tools, results, reps, 40 if args.quick else 400)
            if "slots" in wanted:
                many_slots(tools, results, reps, 80 if args.quick else 2000)
            if "workers" in wanted:
                workers_over_ssh(tools, results, reps, 60 if args.quick else 600,
                                 80 if args.quick else 2000)
            if "each" in wanted:
                once_on_each_node(tools, results, reps, 10 if args.quick else 100)
            if "send" in wanted:
                send_a_file(tools, results, reps, 5 if args.quick else 50,
                            4 if args.quick else 30)
            if "scheduler" in wanted:
                scheduler_overhead(tools, results, reps, 500 if args.quick else 20000)
            if "dead" in wanted:
                dead_nodes(tools, results, reps, 20 if args.quick else 100)
            if "slurm" in wanted:
                slurm(tools, results, reps, 40 if args.quick else 200)
            if "startup" in wanted:
                start_up(tools, results, 3 if args.quick else 20)
        except ContradictedConfiguration as error:
            failed = error
        finally:
            shutil.rmtree(work, ignore_errors=True)
    text = table(results)
    if failed:
        print("\nbench failed: a tool did not run as configured: %s" % failed)
        sys.exit(1)
    print()
    print(text)
    with open(args.out, "w") as out:
        out.write("# Benchmark results\n\n%s\n\n%d repetitions each (median, min-max). "
                  "peer / clstr above 1 means clstr is faster.  logins and remote commands: "
                  "what the sshd (LogLevel VERBOSE) saw per repetition (median), checked "
                  "against each tool's configuration.\n\n%s\n"
                  % (machine(), reps, text))
    print("\nwritten to %s" % args.out)


if __name__ == "__main__":
    main()
