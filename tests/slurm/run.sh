#!/usr/bin/env bash
# make test-slurm: clstr against a real, throwaway four-node Slurm on
# 127.0.0.1 (tests/slurm_cluster.py).  As root; installs Debian's slurmctld,
# slurmd, slurm-client and munge where missing (their services are not
# started: the harness runs its own daemons from a temporary directory).
# Then a smoke check of srun (latency, jobs/s) and the tests in
# tests/slurm/test_slurm.py.  Not part of `make test`.
set -euo pipefail

cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}

if [ "$(id -u)" -ne 0 ]; then
    echo "test-slurm: run as root (munged and slurmd need it)" >&2
    exit 2
fi

missing=()
for program in /usr/sbin/slurmctld:slurmctld /usr/sbin/slurmd:slurmd \
               /usr/bin/srun:slurm-client /usr/sbin/munged:munge; do
    [ -x "${program%%:*}" ] || missing+=("${program##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "+ installing ${missing[*]}"
    apt-get update -qq </dev/null
    # A fresh install may start the packages' own munge and slurmd services
    # (unless policy-rc.d forbids it); the harness neither uses nor touches
    # them: its daemons have their own sockets, ports and files.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" </dev/null
fi
PYTHON=$PYTHON bash .ci/deps pytest
PYTHON=${VENV:-.venv}/bin/python  # where .ci/deps put pytest

"$PYTHON" tests/slurm/smoke.py
CLSTR_SLURM_TEST=1 "$PYTHON" -m pytest -q -rs tests/slurm "$@"
