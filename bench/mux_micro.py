"""What a job costs through clstr's own mux client against ``ssh -S``.

    python3 bench/mux_micro.py [--jobs 400] [--parallel 8] [--reps 3]

Starts the loopback cluster the tests use and one ControlMaster on node001,
then runs ``--jobs`` jobs through it, ``--parallel`` at a time (a new one as
soon as one ends, as clstr does), four ways: clstr.transport.muxclient.MuxAttempt and
``ssh -S socket node001 cmd``, each with the bare command ``true`` and with
``true`` under clstr's remote wrapper.  All four run in one clstr EventLoop.
Prints jobs/s and CPU per job: this process's own (user+sys), its children's
(the ssh clients), and the master's.  Medians of ``--reps`` rounds, the four
ways interleaved in each round.
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from clstr.loop import EventLoop  # noqa: E402
from clstr.transport.child import ChildProcess  # noqa: E402
from clstr.transport.muxclient import MuxAttempt  # noqa: E402
from clstr.transport.wrapper import wrapped_command  # noqa: E402
from cluster import LoopbackCluster  # noqa: E402

HOST = "node001"


def master_cpu(pid):
    """Seconds of CPU the process ``pid`` has used."""
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_batch(loop, start_one, jobs, parallel):
    """Run ``jobs`` jobs, ``parallel`` at a time; ``start_one(done)`` starts
    one and calls ``done(ok)`` when it has ended.  Returns the failures."""
    state = {"started": 0, "running": 0, "failed": 0}

    def done(ok):
        state["running"] -= 1
        if not ok:
            state["failed"] += 1
        fill()

    def fill():
        while state["running"] < parallel and state["started"] < jobs:
            state["started"] += 1
            state["running"] += 1
            start_one(done)

    fill()
    loop.run_while(lambda: state["running"] > 0)
    return state["failed"]


def mux_starter(loop, path, command):
    def start_one(done):
        MuxAttempt(loop, path, command, lambda stream, data: None,
                   lambda code: done(code == 0), lambda kind, detail: done(False))
    return start_one


def ssh_starter(loop, argv, stdin_fd):
    def start_one(done):
        ChildProcess(loop, argv, stdin_fd, lambda stream, data: None,
                     lambda code: done(code == 0))
    return start_one


def measure(loop, start_one, jobs, parallel, master_pid):
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    master_before = master_cpu(master_pid)
    began = time.monotonic()
    failed = run_batch(loop, start_one, jobs, parallel)
    wall = time.monotonic() - began
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)

    def cpu(after, before):
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "jobs/s": jobs / wall,
        "self ms/job": 1000 * cpu(self_after, self_before) / jobs,
        "children ms/job": 1000 * cpu(children_after, children_before) / jobs,
        "master ms/job": 1000 * (master_cpu(master_pid) - master_before) / jobs,
        "failed": failed,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    options = parser.parse_args()

    with LoopbackCluster() as cluster:
        workdir = tempfile.mkdtemp(prefix="mux-bench-", dir="/tmp")
        path = os.path.join(workdir, "s")
        with open(os.path.join(workdir, "log"), "wb") as log:
            subprocess.run(cluster.ssh_argv + ["-o", "ControlMaster=yes", "-o",
                                               "ControlPath=" + path, "-o", "ControlPersist=60",
                                               "-N", HOST],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True,
                           timeout=60)
        check = subprocess.run(cluster.ssh_argv + ["-S", path, "-O", "check", HOST],
                               capture_output=True, text=True, timeout=60)
        master_pid = int(check.stderr.split("pid=")[1].split(")")[0])
        loop = EventLoop()
        # One pipe whose write end we hold, as clstr gives its ssh children:
        # the wrapper stops its job at EOF on stdin.
        stdin_read, stdin_write = os.pipe()
        ssh = cluster.ssh_argv + ["-o", "ControlMaster=no", "-o", "ControlPath=" + path,
                                  "--", HOST]
        ways = [
            ("mux client, true", mux_starter(loop, path, b"true")),
            ("ssh -S, true", ssh_starter(loop, ssh + ["true"], stdin_read)),
            ("mux client, wrapped true", mux_starter(loop, path, wrapped_command(b"true"))),
            ("ssh -S, wrapped true",
             ssh_starter(loop, ssh + [wrapped_command(b"true")], stdin_read)),
        ]
        results = {name: [] for name, _ in ways}
        try:
            for _ in range(options.reps):
                for name, start_one in ways:
                    results[name].append(measure(loop, start_one, options.jobs,
                                                 options.parallel, master_pid))
        finally:
            loop.close()
            os.close(stdin_read)
            os.close(stdin_write)
            subprocess.run(cluster.ssh_argv + ["-S", path, "-O", "exit", HOST],
                           capture_output=True, timeout=60)
            shutil.rmtree(workdir, ignore_errors=True)

    columns = ["jobs/s", "self ms/job", "children ms/job", "master ms/job", "failed"]
    print("%d jobs, %d at a time, one master on %s; medians of %d rounds"
          % (options.jobs, options.parallel, HOST, options.reps))
    print("| way | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, _ in ways:
        cells = []
        for column in columns:
            value = statistics.median(r[column] for r in results[name])
            cells.append("%d" % value if column == "failed" else "%.2f" % value)
        print("| %s | %s |" % (name, " | ".join(cells)))


if __name__ == "__main__":
    main()
