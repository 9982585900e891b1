"""A throwaway single-node Slurm on loopback, for the real Slurm tests.

``LoopbackSlurm`` starts, from a fresh temporary directory and as root:

- ``munged`` with a throwaway key and its own socket, pid, log and seed files;
- ``slurmctld`` and ``slurmd`` in the foreground, reading a generated
  ``slurm.conf`` (``SLURM_CONF``) with free loopback ports of their own, their
  own state, spool, pid and log files, and one node (``NODE``) whose address
  is 127.0.0.1;

then waits (bounded) for ``sinfo`` to show the node idle.  ``stop`` kills the
daemons and any job step they left behind, and removes the directory.
Nothing of the machine's own Slurm or munge (``/etc/slurm``,
``/etc/munge``, ``/run/munge``) is read, written or stopped.

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

NODE = "clstrslurm1"
PARTITION = "clstr"
DAEMONS = ("munged", "slurmctld", "slurmd", "srun", "sinfo", "salloc")
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
    """One munged, one slurmctld and one slurmd on 127.0.0.1.

    ``cpus``: the CPUs the node claims (its task slots); ``extra_config``:
    lines appended to slurm.conf (e.g. ``MaxStepCount=5``)."""

    def __init__(self, cpus=4, extra_config=()):
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
            for name in ("state", "spool", "log"):
                os.mkdir(self.path(name), 0o700)
            self._start_munged()
            self._write_config()
            self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", self.conf])
            self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", self.conf])
            try:
                _wait_for(self._node_idle, "node %s idle in sinfo" % NODE, 60,
                          check=self._check_daemons)
            except RuntimeError as error:
                raise RuntimeError("%s\n%s" % (error, self.diagnostics())) from None
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
        ctld_port, slurmd_port = _free_ports(2)
        munge = "socket=" + self.munge_socket
        plugstack = self.path("plugstack.conf")
        open(plugstack, "w").close()
        lines = [
            "ClusterName=clstrtest",
            # slurmctld checks that SlurmctldHost names this machine; the
            # address in brackets keeps every client on loopback.
            "SlurmctldHost=%s(127.0.0.1)" % socket.gethostname().split(".")[0],
            "SlurmctldPort=%d" % ctld_port,
            "SlurmdPort=%d" % slurmd_port,
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "AuthInfo=" + munge,
            "CredType=cred/munge",
            "StateSaveLocation=" + self.path("state"),
            "SlurmdSpoolDir=" + self.path("spool"),
            "SlurmctldPidFile=" + self.path("slurmctld.pid"),
            "SlurmdPidFile=" + self.path("slurmd.pid"),
            "SlurmctldLogFile=" + self.path("log/slurmctld.log"),
            "SlurmdLogFile=" + self.path("log/slurmd.log"),
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
            "ReturnToService=2",
            # Trust the CPUs configured here over the machine's: tests want
            # more task slots than this small machine has cores.
            "SlurmdParameters=config_overrides",
            "MailProg=/bin/true",
            # Signal to kill (TERM then KILL) faster than the default 30 s, so
            # a killed step is gone soon.
            "KillWait=2",
            "MinJobAge=10",
            "SlurmdTimeout=30",
            "NodeName=%s NodeAddr=127.0.0.1 NodeHostname=%s CPUs=%d State=UNKNOWN"
            % (NODE, NODE, self.cpus),
            "PartitionName=%s Nodes=%s Default=YES MaxTime=INFINITE State=UP"
            % (PARTITION, NODE),
        ] + self.extra_config
        with open(self.conf, "w") as out:
            out.write("\n".join(lines) + "\n")

    def _spawn(self, name, argv):
        log = open(self.path("log/%s.out" % name), "wb")
        env = self.env()
        try:
            self._daemons[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self.directory, start_new_session=True)
        finally:
            log.close()

    def _check_daemons(self):
        for name, process in self._daemons.items():
            if process.poll() is not None:
                raise RuntimeError("slurm harness: %s exited %s:\n%s"
                                   % (name, process.returncode, self.logs(name)))

    def _node_idle(self):
        result = subprocess.run(["sinfo", "-h", "-N", "-n", NODE, "-o", "%t"],
                                env=self.env(), stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=30)
        return result.returncode == 0 and result.stdout.strip() == b"idle"

    def logs(self, name):
        """What daemon ``name`` wrote (its own log file and its stdout)."""
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
        for name in ("munged", "slurmctld", "slurmd"):
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
        for name in ("slurmd", "slurmctld", "munged"):
            process = self._daemons.pop(name, None)
            if process is None:
                continue
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=15)
        if self.directory:
            self._kill_leftover_steps()
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _kill_leftover_steps(self):
        """slurmstepd daemonizes away from slurmd, so a step still running
        when slurmd stops outlives it: kill every slurmstepd started for this
        cluster (its environment holds our SLURM_CONF) and what it runs."""
        marker = ("SLURM_CONF=" + self.conf).encode()
        parents = _process_parents()
        steps = [pid for pid in parents
                 if _comm(pid) == "slurmstepd" and marker in _environ(pid)]
        doomed = set(steps)
        grew = True
        while grew:
            grew = False
            for pid, parent in parents.items():
                if parent in doomed and pid not in doomed:
                    doomed.add(pid)
                    grew = True
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
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
        print("export SLURM_CONF=%s  # node %s, partition %s"
              % (cluster.conf, NODE, PARTITION), flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    sys.exit(main())
