"""Smoke check of the loopback Slurm: is srun there, and how fast?

Starts ``tests/slurm_cluster.LoopbackSlurm`` and measures an srun of
``true`` one at a time (latency) and 50 of them through ``xargs -P 4``
(jobs/s), both as steps inside an ``salloc`` (what ``--slurm`` does) and as
srun calls that each make their own allocation (``--exec srun`` outside an
allocation).  Exits non-zero if any srun failed.  Run by tests/slurm/run.sh.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slurm_cluster import NODE, LoopbackSlurm  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from clstr.transport.slurm import SRUN_TEMPLATE  # noqa: E402

JOBS = 50
PARALLEL = 4
SEQUENTIAL = 10

# Runs inside salloc (or alone): times SEQUENTIAL srun true one after the
# other, then JOBS of them through xargs -P, and prints both times in ns.
# "$@" is the srun command line; no outside text enters this script.
MEASURE = r"""
start=$(date +%s%N)
i=0; while [ $i -lt "$SEQUENTIAL" ]; do "$@" true || exit 1; i=$((i + 1)); done
middle=$(date +%s%N)
seq "$JOBS" | xargs -P "$PARALLEL" -I{} "$@" true || exit 1
end=$(date +%s%N)
echo "$((middle - start)) $((end - middle))"
"""


def measure(cluster, label, prefix):
    srun = SRUN_TEMPLATE.replace("{host}", NODE).split()
    env = cluster.env()
    env.update(SEQUENTIAL=str(SEQUENTIAL), JOBS=str(JOBS), PARALLEL=str(PARALLEL))
    result = cluster.run(prefix + ["sh", "-c", MEASURE, "measure"] + srun, env=env,
                         timeout=600)
    if result.returncode != 0:
        sys.stderr.write("%s: failed (%d)\n%s\n" % (label, result.returncode,
                                                      result.stderr.decode("utf-8", "replace")))
        return False
    sequential_ns, parallel_ns = (int(n) for n in result.stdout.split()[-2:])
    print("%-34s srun true: %5.0f ms each one at a time; %d through xargs -P %d: "
          "%.1f s, %.1f jobs/s" % (label, sequential_ns / 1e6 / SEQUENTIAL, JOBS, PARALLEL,
                                   parallel_ns / 1e9, JOBS / (parallel_ns / 1e9)), flush=True)
    return True


def main():
    print("srun: %s" % SRUN_TEMPLATE, flush=True)
    # One node, as the bench's Slurm row: steps on a single slurmd.
    with LoopbackSlurm(nodes=[NODE], cpus=PARALLEL) as cluster:
        ok = measure(cluster, "steps inside salloc -n %d:" % PARALLEL,
                     ["salloc", "--quiet", "-N1", "-n%d" % PARALLEL])
        ok = measure(cluster, "one allocation per srun:", []) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
