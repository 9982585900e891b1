"""A throwaway four-node Slurm on loopback, for the real Slurm tests.

``LoopbackSlurm`` starts, from a fresh temporary directory and as root:

- ``munged`` with a throwaway key and its own socket, pid, log and seed files;
- ``slurmctld`` and one ``slurmd -N NAME`` per node (``NODES``: n1-n4), all in
  the foreground, reading a generated ``slurm.conf`` (``SLURM_CONF``) with
  free loopback ports of their own (one per slurmd), their own state, spool,
  pid and log files; every node's address is 127.0.0.1 (Debian's slurm is
  built with multiple-slurmd support, so one machine can be four nodes);

then waits (bounded) for ``sinfo`` to show every node idle.  Tests break one
node (``kill_slurmd``, ``freeze_slurmd``, ``crash``) and mend it again
(``restore``).  ``stop`` kills the daemons and any job step they left behind,
and removes the directory.  Nothing of the machine's own Slurm or munge
(``/etc/slurm``, ``/etc/munge``, ``/run/munge``) is read, written or stopped.

It installs nothing: ``tests/slurm/run.sh`` does that.  Clients (srun, sinfo,
salloc) find this cluster through ``env()``.  ``python3 tests/slurm_cluster.py``
starts one and prints the environment to use until Ctrl-C.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

NODES = ("n1", "n2", "n3", "n4")
NODE = NODES[0]  # for tests that want one node
PARTITION = "clstr"
DAEMONS = ("munged", "slurmctld", "slurmd", "srun", "sinfo", "salloc", "scancel")
# Where Debian 12 installs the daemons; on PATH for root, but not always for
# other users.
SBIN = "/usr/sbin"


def missing_programs():
    """The programs this harness needs that are not installed."""
    path = os.environ.get("PATH", "") + os.pathsep + SBIN
    return [name for name in DAEMONS if not shutil.which(name, path=path)]


def _free_ports(count):
    # Hold every probe socket until all are chosen, so no two are the same.
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _wait_for(predicate, what, timeout, check=None):
    """Poll ``predicate`` until it is true; ``check`` (called each round) may
    raise when waiting is pointless (a daemon died)."""
    deadline = time.monotonic() + timeout
    while True:
        if check:
            check()
        if predicate():
            return
        if time.monotonic() > deadline:
            raise RuntimeError("slurm harness: %s not within %g s" % (what, timeout))
        time.sleep(0.05)


class LoopbackSlurm:
    """One munged, one slurmctld and a slurmd per node, all on 127.0.0.1.

    ``nodes``: the node names (a prefix of ``NODES`` by default); ``cpus``:
    the CPUs each node claims (its task slots); ``extra_config``: lines
    appended to slurm.conf (e.g. ``MaxStepCount=5``)."""

    def __init__(self, nodes=NODES, cpus=2, extra_config=()):
        self.nodes = list(nodes)
        self.cpus = cpus
        self.extra_config = list(extra_config)
        self.directory = None
        self._daemons = {}

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def path(self, name):
        return os.path.join(self.directory, name)

    @property
    def conf(self):
        return self.path("slurm.conf")

    @property
    def munge_socket(self):
        return self.path("munge.socket")

    def env(self, base=None):
        """An environment for Slurm's clients (and clstr) that talks to this
        cluster only.  Any SLURM_* variable of an enclosing allocation is
        dropped: it belongs to another cluster."""
        env = {key: value for key, value in (os.environ if base is None else base).items()
               if not key.startswith("SLURM_")}
        env["SLURM_CONF"] = self.conf
        env["PATH"] = env.get("PATH", "") + os.pathsep + SBIN
        return env

    def start(self):
        if os.geteuid() != 0:
            raise RuntimeError("slurm harness: must run as root (munged and slurmd)")
        missing = missing_programs()
        if missing:
            raise RuntimeError("slurm harness: not installed: %s (apt-get install slurmctld "
                               "slurmd slurm-client munge)" % " ".join(missing))
        self.directory = tempfile.mkdtemp(prefix="clstr-slurm-")
        # munged wants its socket's directory searchable by all (any user may
        # ask for a credential); what is secret in it is mode 0700 or 0400.
        os.chmod(self.directory, 0o711)
        try:
            for name in ["state", "spool", "log"] + ["spool/" + node for node in self.nodes]:
                os.mkdir(self.path(name), 0o700)
            self._start_munged()
            self._write_config()
            self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", self.conf])
            for node in self.nodes:
                self._start_slurmd(node)
            self.wait_for_states({node: ("idle",) for node in self.nodes}, timeout=60)
        except BaseException:
            self.stop()
            raise

    def _start_munged(self):
        key = self.path("munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as out:
            out.write(os.urandom(1024))
        # -F: stay in the foreground, so the pid we hold is munged's.
        # --force: munged refuses a socket path it thinks stale and a few
        # other leftovers; the directory is fresh, so it is always ours.
        self._spawn("munged", [
            "munged", "-F", "--force",
            "--socket=" + self.munge_socket,
            "--key-file=" + key,
            "--pid-file=" + self.path("munged.pid"),
            "--log-file=" + self.path("log/munged.log"),
            "--seed-file=" + self.path("munged.seed"),
        ])
        _wait_for(lambda: os.path.exists(self.munge_socket), "munged socket", 30,
                  check=self._check_daemons)

    def _write_config(self):
        ctld_port, *slurmd_ports = _free_ports(1 + len(self.nodes))
        munge = "socket=" + self.munge_socket
        plugstack = self.path("plugstack.conf")
        open(plugstack, "w").close()
        # slurmctld checks that SlurmctldHost names this machine, and each
        # slurmd that its NodeHostname does; the addresses keep every client
        # and daemon on loopback.
        hostname = socket.gethostname().split(".")[0]
        lines = [
            "ClusterName=clstrtest",
            "SlurmctldHost=%s(127.0.0.1)" % hostname,
            "SlurmctldPort=%d" % ctld_port,
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "AuthInfo=" + munge,
            "CredType=cred/munge",
            "StateSaveLocation=" + self.path("state"),
            # %n: the node's name, so the four slurmd keep apart.
            "SlurmdSpoolDir=" + self.path("spool/%n"),
            "SlurmctldPidFile=" + self.path("slurmctld.pid"),
            "SlurmdPidFile=" + self.path("slurmd.%n.pid"),
            "SlurmctldLogFile=" + self.path("log/slurmctld.log"),
            "SlurmdLogFile=" + self.path("log/slurmd.%n.log"),
            "PlugStackConfig=" + plugstack,
            # linuxproc tracks a step's processes by parentage, which a job
            # started under setsid keeps; pgid would lose it.  No cgroups here.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            # A node that was down (a test crashed it) is back in service as
            # soon as its slurmd registers again.
            "ReturnToService=2",
            # Trust the CPUs configured here over the machine's: tests want
            # more task slots than this small machine has cores.
            "SlurmdParameters=config_overrides",
            "MailProg=/bin/true",
            # Signal to kill (TERM then KILL) faster than the default 30 s, so
            # a killed step is gone soon.
            "KillWait=2",
            "MinJobAge=10",
            # A node whose slurmd stops answering is down after 30 s (and an
            # allocation on it revoked, unless salloc --no-kill).
            "SlurmdTimeout=30",
        ]
        for node, port in zip(self.nodes, slurmd_ports):
            lines.append("NodeName=%s NodeHostname=%s NodeAddr=127.0.0.1 Port=%d CPUs=%d "
                         "State=UNKNOWN" % (node, hostname, port, self.cpus))
        lines.append("PartitionName=%s Nodes=%s Default=YES MaxTime=INFINITE State=UP"
                     % (PARTITION, ",".join(self.nodes)))
        with open(self.conf, "w") as out:
            out.write("\n".join(lines + self.extra_config) + "\n")

    def _spawn(self, name, argv, env=None):
        log = open(self.path("log/%s.out" % name), "wb")
        try:
            self._daemons[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env or self.env(), cwd=self.directory, start_new_session=True)
        finally:
            log.close()

    def _start_slurmd(self, node):
        # The slurmstepd a slurmd starts inherit its environment, which is
        # how crash() finds the steps of one node.
        env = self.env()
        env[_NODE_MARK] = self._node_mark(node)
        self._spawn("slurmd." + node, ["slurmd", "-D", "-N", node, "-f", self.conf], env=env)

    def _node_mark(self, node):
        return "%s:%s" % (self.directory, node)

    def _check_daemons(self):
        for name, process in self._daemons.items():
            if process.poll() is not None:
                raise RuntimeError("slurm harness: %s exited %s:\n%s"
                                   % (name, process.returncode, self.logs(name)))

    # -- what the tests do to one node --------------------------------------

    def kill_slurmd(self, node):
        """SIGKILL node's slurmd alone: its running steps go on."""
        process = self._daemons.pop("slurmd." + node)
        process.kill()
        process.wait(timeout=15)

    def freeze_slurmd(self, node):
        """SIGSTOP node's slurmd (``thaw_slurmd`` sends SIGCONT)."""
        self._daemons["slurmd." + node].send_signal(signal.SIGSTOP)

    def thaw_slurmd(self, node):
        self._daemons["slurmd." + node].send_signal(signal.SIGCONT)

    def crash(self, node):
        """The node dies as a machine does: its slurmd, every slurmstepd it
        started and all they run are SIGKILLed, with no word to anyone."""
        process = self._daemons.pop("slurmd." + node, None)
        if process is not None:
            process.kill()
            process.wait(timeout=15)
        # Its slurmd's forks and the slurmstepd it started carry the mark.
        _kill_trees((_NODE_MARK + "=" + self._node_mark(node)).encode())

    def restore(self, timeout=90):
        """Mend what tests broke: every node's slurmd running (and not
        stopped) and every node idle in sinfo again.  All slurmd first: a
        job's end waits for each of its nodes to confirm it."""
        for node in self.nodes:
            process = self._daemons.get("slurmd." + node)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
            else:
                self._start_slurmd(node)
        self.wait_for_states({node: ("idle",) for node in self.nodes}, timeout=timeout)

    def node_state(self, node):
        """sinfo's short state of ``node`` (``idle``, ``alloc``, ``mix``,
        ``down*``, ``idle*``: a ``*`` means not responding), or "" if sinfo
        failed."""
        result = self.run(["sinfo", "-h", "-N", "-n", node, "-o", "%t"], timeout=30)
        if result.returncode != 0:
            return ""
        return result.stdout.decode("utf-8", "replace").strip()

    def wait_for_states(self, wanted, timeout):
        """Wait until each node's sinfo state is one of ``wanted[node]``."""
        def reached():
            return all(self.node_state(node) in states for node, states in wanted.items())
        try:
            _wait_for(reached, "node states %r" % wanted, timeout, check=self._check_daemons)
        except RuntimeError as error:
            raise RuntimeError("%s\n%s" % (error, self.diagnostics())) from None

    # -----------------------------------------------------------------------

    def logs(self, name):
        """What daemon ``name`` (``slurmd.n2`` for a node's) wrote: its own
        log file and its stdout."""
        text = []
        for path in (self.path("log/%s.log" % name), self.path("log/%s.out" % name)):
            try:
                with open(path, "rb") as log:
                    text.append(log.read()[-4000:].decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(text)

    def diagnostics(self):
        """The daemons' last words and sinfo's view, for a failed start."""
        sinfo = self.run(["sinfo", "-N", "-l"], timeout=30)
        parts = [sinfo.stdout.decode("utf-8", "replace"), sinfo.stderr.decode("utf-8", "replace")]
        for name in ["munged", "slurmctld"] + ["slurmd." + node for node in self.nodes]:
            parts.append("--- %s ---\n%s" % (name, self.logs(name)))
        return "\n".join(parts)

    def run(self, argv, **kwargs):
        """Run a Slurm client (or anything) against this cluster."""
        kwargs.setdefault("env", self.env())
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 120)
        return subprocess.run(argv, **kwargs)

    def stop(self):
        slurmds = sorted(name for name in self._daemons if name.startswith("slurmd."))
        for name in slurmds + ["slurmctld", "munged"]:
            process = self._daemons.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            # A stopped slurmd (freeze_slurmd) handles TERM only once
            # continued.
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        if self.directory:
            # slurmstepd daemonizes away from slurmd, so a step still running
            # when slurmd stops outlives it: kill every slurmstepd started for
            # this cluster (its environment holds our SLURM_CONF).
            _kill_trees(("SLURM_CONF=" + self.conf).encode(), comm="slurmstepd")
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


# Set in each slurmd's environment (and so in its slurmstepd's): which
# cluster and node a step belongs to.
_NODE_MARK = "CLSTR_TEST_SLURM_NODE"


def _kill_trees(marker, comm=None):
    """SIGKILL every process whose environment holds ``marker`` (bytes,
    ``NAME=VALUE``; only those named ``comm``, if given) and every process
    under them.  The trees are stopped first, so none forks a child we would
    miss or loses its parentage (an orphan's parent becomes init) before it
    is killed."""
    found = [pid for pid in _process_parents()
             if (comm is None or _comm(pid) == comm) and marker in _environ(pid)]
    doomed = set()
    for _ in range(100):  # a tree stopped level by level; bounded all the same
        fresh = set(found) - doomed
        if not fresh:
            break
        _signal_all(fresh, signal.SIGSTOP)
        doomed |= fresh
        found = [pid for pid, parent in _process_parents().items() if parent in doomed]
    _signal_all(doomed, signal.SIGKILL)


def _signal_all(pids, signum):
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def _read_proc(pid, name):
    try:
        with open("/proc/%d/%s" % (pid, name), "rb") as source:
            return source.read()
    except OSError:
        return b""


def _comm(pid):
    return _read_proc(pid, "comm").strip().decode("utf-8", "replace")


def _environ(pid):
    return _read_proc(pid, "environ").split(b"\0")


def _process_parents():
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_proc(int(entry), "stat")
            # The command name (field 2) may hold spaces; ppid follows its ')'.
            fields = stat[stat.rfind(b")") + 2:].split()
            if len(fields) > 1:
                parents[int(entry)] = int(fields[1])
    return parents


def main():
    with LoopbackSlurm() as cluster:
        print("export SLURM_CONF=%s  # nodes %s, partition %s"
              % (cluster.conf, ",".join(cluster.nodes), PARTITION), flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    sys.exit(main())
