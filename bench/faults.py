"""A fault-mix run over the loopback sshd cluster, for the numbers a careful
user asks for: did every job run exactly once, how long did it take, and what
was left running on the nodes after a Ctrl-C?

    python3 bench/faults.py [--jobs 200] [--out FILE]

Nodes: 16 good, 4 refusing connections, 2 silent (a listener that never sends
a banner), 1 rejecting our key.  Faults inside jobs: the first two jobs to
claim a token kill the sshd process serving them (a node dying mid-job), the
first to claim another freezes it with SIGSTOP (a node hanging mid-job, TCP
open).  Every job prints one line with its number; the count of each number
on stdout tells completed, lost and duplicated.  A second run is interrupted
with SIGINT halfway and the remote processes carrying the run's marker are
counted afterwards.  Only 127.0.0.1 is contacted.
"""

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

import clstr_run  # noqa: E402
from clstr_run import FIND_SESSION_SSHD, node_args  # noqa: E402
from cluster import LoopbackCluster  # noqa: E402

# Each job: claim a fault token if one is left (mkdir is atomic), act on it,
# then do its work and print its number.
JOB = ("marker={marker}; n={n}; " + FIND_SESSION_SSHD.replace("{", "{{").replace("}", "}}") +
       "if mkdir {tokens}/kill1 2>/dev/null || mkdir {tokens}/kill2 2>/dev/null; "
       "then sleep 0.5; kill -9 $session; sleep 30; fi; "
       "if [ $n -gt 20 ] && mkdir {tokens}/hang 2>/dev/null; "
       "then echo $session > {tokens}/hung-pid; kill -STOP $session; sleep 60; fi; "
       "sleep 0.{delay}; echo job $n")


def write_jobs(path, count, tokens, marker):
    with open(path, "w") as handle:
        for n in range(1, count + 1):
            handle.write(JOB.format(marker=marker, n=n, tokens=tokens, delay=n % 5 + 1) + "\n")


def nodes(cluster):
    return node_args(cluster.nodes(16) + cluster.dead_nodes(4) + cluster.silent_nodes(2)
                     + cluster.badkey_nodes(1))


def clstr_argv(cluster, *args):
    return clstr_run.clstr_argv(cluster, "--connect-timeout", "3", "--alive-interval", "2",
                                *args)


def thaw(tokens):
    """Let the frozen sshd process go, so the cluster can shut down."""
    try:
        with open(os.path.join(tokens, "hung-pid")) as handle:
            os.kill(int(handle.read().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def full_run(cluster, work, count, mode):
    tokens = tempfile.mkdtemp(prefix="tokens-", dir=work)
    os.chmod(tokens, 0o1777)
    marker = "clstr-faultmix-%d" % os.getpid()
    jobs = os.path.join(work, "jobs")
    write_jobs(jobs, count, tokens, marker)
    started = time.monotonic()
    try:
        done = subprocess.run(clstr_argv(cluster, mode, "-v", *nodes(cluster), "-J", jobs),
                              cwd=REPO, capture_output=True, timeout=600,
                              stdin=subprocess.DEVNULL)
    finally:
        thaw(tokens)
    elapsed = time.monotonic() - started
    seen = collections.Counter(re.findall(rb"^job (\d+)$", done.stdout, re.M))
    once = sum(1 for n in range(1, count + 1) if seen[str(n).encode()] == 1)
    lost = sum(1 for n in range(1, count + 1) if seen[str(n).encode()] == 0)
    duplicated = sum(1 for n in range(1, count + 1) if seen[str(n).encode()] > 1)
    retired = [line for line in done.stderr.decode(errors="replace").splitlines()
               if "retired" in line]
    return {"exit status": done.returncode, "jobs": count, "completed exactly once": once,
            "lost": lost, "duplicated": duplicated, "wall time s": round(elapsed, 2),
            "retirement messages": retired}


def retirement_latency(cluster, mode):
    """Seconds from clstr's start (Python's own start-up included) to each
    node's retirement message; one job per node so every node is tried."""
    argv = clstr_argv(cluster, mode, "-v", "-n", "dead001", "-n", "badkey001", "-n",
                      "wronghost001", "-n", "silent001", "-n", "node001", *["-j", "sleep 1"] * 5)
    started = time.monotonic()
    child = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = {}
    for line in child.stderr:
        found = re.search(rb"node (\S+) retired: (\w+( \w+)?)", line)
        if found:
            seen["%s (%s)" % (found.group(1).decode(), found.group(2).decode())] = round(
                time.monotonic() - started, 3)
    child.wait(timeout=60)
    return {"seconds from start to retirement, %s" % mode: ", ".join(
        "%s %s" % item for item in seen.items())}


def interrupted_run(cluster, work, count):
    tokens = tempfile.mkdtemp(prefix="tokens-", dir=work)
    os.chmod(tokens, 0o1777)
    # No faults this time: take every token first.
    for token in ("kill1", "kill2", "hang"):
        os.mkdir(os.path.join(tokens, token))
    marker = "clstr-interrupt-%d" % os.getpid()
    jobs = os.path.join(work, "long-jobs")
    with open(jobs, "w") as handle:
        for n in range(1, count + 1):
            # A job that starts a grandchild too: the whole tree must go.
            handle.write("sh -c 'sleep 30; : %s' & sleep 30; echo %s %d\n" % (marker, marker, n))
    child = subprocess.Popen(clstr_argv(cluster, *nodes(cluster), "-J", jobs), cwd=REPO,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(cluster.remote_processes(marker)) < 16:
        time.sleep(0.2)
    running = len(cluster.remote_processes(marker))
    child.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    child.wait(timeout=60)
    stopped_in = time.monotonic() - interrupted
    time.sleep(3)  # the wrapper's TERM, then KILL 2 s later
    orphans = cluster.remote_processes(marker)
    return {"exit status": child.returncode, "remote processes with the marker before": running,
            "clstr exited after SIGINT in s": round(stopped_in, 2),
            "remote orphans 3 s later": len(orphans)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--out", default=os.path.join(HERE, "faults-latest.txt"))
    args = parser.parse_args()
    lines = []
    with LoopbackCluster() as cluster:
        work = tempfile.mkdtemp(prefix="clstr-faults-")
        os.chmod(work, 0o755)
        runs = [("fault mix, %s" % mode, lambda mode=mode: full_run(cluster, work, args.jobs, mode))
                for mode in ("--multiplex", "--no-multiplex")]
        runs += [("retirement latency, %s" % mode,
                  lambda mode=mode: retirement_latency(cluster, mode))
                 for mode in ("--multiplex", "--no-multiplex")]
        runs.append(("Ctrl-C at mid-run", lambda: interrupted_run(cluster, work, 64)))
        for title, run in runs:
            result = run()
            lines.append("%s:" % title)
            for key, value in result.items():
                if isinstance(value, list):
                    lines += ["  %s:" % key] + ["    " + item for item in value]
                else:
                    lines.append("  %s: %s" % (key, value))
    text = "\n".join(lines)
    print(text)
    with open(args.out, "w") as out:
        out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
