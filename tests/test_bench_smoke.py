"""A small run of the benchmark script, so that it cannot rot."""

import os
import subprocess
import sys

from clstr_run import REPO


def test_benchmark_quick_run_produces_a_table(cluster, tmp_path):
    # The cluster fixture proves sshd is here; the script starts its own.
    out = tmp_path / "results.md"
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench.py"), "--quick",
                             "--no-install", "--clstr-only", "--out", str(out)]
                            + ["--only=%s" % name for name in
                               ("short", "slots", "each", "scheduler", "dead", "startup")],
                            capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = out.read_text()
    for row in ("| clstr |", "| clstr --no-multiplex |", "| clstr -E |",
                "| clstr (ssh = fakessh) |", "| clstr.pyz --version |"):
        line = next(line for line in table.splitlines() if row in line)
        median = line.split("|")[3].strip()
        assert float(median) > 0, line
