"""What the remote wrapper costs a job, on the node, over the loopback sshd.

    python3 bench/wrapper_cost.py [--jobs 300] [--rounds 5] [--host node001|bashnode001]

One ControlMaster to node001; jobs run one after another through it with
`ssh -S`, each with a pipe as stdin that stays open (as clstr gives them), so
the wrapper's watcher is armed as in a real run.  Variants:

- bare:    `true` as the remote command, what a plain `ssh host true` costs;
- wrapped: `true` under clstr's wrapper (`ssh.wrapped_command`), through
           `exec sh -c`, as clstr sends it today;
- inline:  the same, told the login shell (learnt from the master), which
           runs the wrapper itself when it is a POSIX shell.

Reported per job:
- remote CPU: the growth of the session's sshd process's own CPU plus that
  of its reaped children (utime+stime+cutime+cstime in /proc/PID/stat), over
  all jobs of a round; the median round.  That is the login shell, the
  wrapper, the job and everything they waited for (a child orphaned to init
  would be missed: only the watcher, killed while blocked in `read`);
- wall time of one job through the master, seen by the local ssh (median
  round; it includes the local ssh client, the same for every variant);
- processes and execs: counted by `strace -f` attached to the session's
  sshd process for a few jobs (new processes = fork/clone results; execs =
  successful execve calls).
Only 127.0.0.1 is contacted.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)

from clstr.transport.wrapper import wrapped_command  # noqa: E402
from cluster import LoopbackCluster  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def variants(login_shell):
    return [("bare", b"true"), ("wrapped", wrapped_command(b"true")),
            ("inline", wrapped_command(b"true", login_shell=login_shell))]


class Master:
    """One ControlMaster to ``host``; ``run`` sends jobs through it."""

    def __init__(self, cluster, host, work):
        self.cluster = cluster
        self.host = host
        self.path = os.path.join(work, "master")
        subprocess.run(cluster.ssh_argv + ["-o", "ControlMaster=yes", "-o",
                                           "ControlPath=" + self.path, "-o",
                                           "ControlPersist=120", "-N", host],
                       check=True, stdin=subprocess.DEVNULL, timeout=30)
        # Jobs get a pipe nobody writes to, as under clstr: EOF would stop them.
        self.stdin_read, self.stdin_write = os.pipe()
        self.session_pid, self.login_shell = self.run(b"echo $PPID $SHELL").decode().split()
        self.session_pid = int(self.session_pid)

    def run(self, remote):
        done = subprocess.run(self.cluster.ssh_argv + ["-S", self.path, "-o",
                                                       "ControlMaster=no", self.host,
                                                       remote],
                              stdin=self.stdin_read, stdout=subprocess.PIPE, timeout=60)
        if done.returncode != 0:
            raise RuntimeError("%r exited %d" % (remote, done.returncode))
        return done.stdout

    def close(self):
        subprocess.run(self.cluster.ssh_argv + ["-S", self.path, "-O", "exit", self.host],
                       capture_output=True, timeout=30)
        os.close(self.stdin_read)
        os.close(self.stdin_write)


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    # utime stime cutime cstime are fields 14-17 (1-based) of the whole line.
    return sum(int(value) for value in fields[11:15])


def measure_cpu_and_wall(master, remote, jobs):
    before = cpu_ticks(master.session_pid)
    started = time.monotonic()
    for _ in range(jobs):
        master.run(remote)
    wall = (time.monotonic() - started) / jobs
    cpu = (cpu_ticks(master.session_pid) - before) / TICKS / jobs
    return cpu, wall


def count_processes(master, remote, jobs, work):
    """(processes, execs) per job, from strace attached to the session."""
    if not shutil.which("strace"):
        return None, None
    log = os.path.join(work, "strace.log")
    if os.path.exists(log):
        os.unlink(log)
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", log, "-e",
                               "trace=fork,vfork,clone,clone3,execve",
                               "-p", str(master.session_pid)],
                              stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(log) or not os.path.getsize(log):
        # strace writes nothing until something happens: one untraced
        # warm-up job cannot be told apart, so wait for attachment instead.
        if time.monotonic() > deadline:
            break
        master.run(b"true")
        time.sleep(0.2)
    start = os.path.getsize(log) if os.path.exists(log) else 0
    for _ in range(jobs):
        master.run(remote)
    time.sleep(0.5)
    tracer.terminate()
    tracer.wait(timeout=10)
    with open(log) as handle:
        handle.seek(start)
        text = handle.read()
    # Only the session's children count, not the session's own forks.
    # strace splits a call that another traced process interrupts into an
    # "<unfinished ...>" line and a "<... clone resumed>" one.
    call = r"(?:\b(?:{0})\(.*|<\.\.\. (?:{0}) resumed>.*)"
    forks = len(re.findall(call.format(r"v?fork|clone3?") + r"\) = [1-9]\d*$", text, re.M))
    execs = len(re.findall(call.format("execve") + r"\) = 0$", text, re.M))
    return forks / jobs, execs / jobs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs per round and variant")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--host", default="node001", help="node001 (dash) or bashnode001")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="clstr-wrapper-cost-")
    with LoopbackCluster() as cluster:
        master = Master(cluster, args.host, work)
        try:
            cpu = {name: [] for name, _ in variants(master.login_shell)}
            wall = {name: [] for name, _ in variants(master.login_shell)}
            for _ in range(args.rounds):
                # Interleaved, so a neighbour's load falls on every variant.
                for name, remote in variants(master.login_shell):
                    job_cpu, job_wall = measure_cpu_and_wall(master, remote, args.jobs)
                    cpu[name].append(job_cpu)
                    wall[name].append(job_wall)
            print("%d jobs x %d rounds on %s" % (args.jobs, args.rounds, args.host))
            print("%-8s %14s %14s %10s %6s" % ("variant", "remote CPU ms", "wall ms",
                                               "processes", "execs"))
            for name, remote in variants(master.login_shell):
                processes, execs = count_processes(master, remote, 20, work)
                print("%-8s %14.2f %14.2f %10s %6s" % (
                    name, 1000 * statistics.median(cpu[name]),
                    1000 * statistics.median(wall[name]),
                    "-" if processes is None else "%.1f" % processes,
                    "-" if execs is None else "%.1f" % execs))
        finally:
            master.close()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
