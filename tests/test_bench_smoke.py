"""A small run of the benchmark script, so that it cannot rot: it must run
every clstr scenario and show, from what the sshd logged, that every job ran
exactly once over the logins its configuration allows."""

import os
import subprocess
import sys

from clstr_run import REPO

SCENARIOS = ("short", "slots", "each", "scheduler", "dead", "startup", "send")


def table_rows(text):
    """{(scenario, tool): [median, min-max, jobs/s, ratio, logins, commands]}
    from the results table."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0] not in ("scenario", "---"):
            rows[cells[0], cells[1]] = cells[2:]
    return rows


def test_benchmark_quick_run_counts_every_job_once(cluster, tmp_path):
    # The cluster fixture proves sshd is here; the script starts its own.
    out = tmp_path / "results.md"
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench.py"), "--quick",
                             "--no-install", "--clstr-only", "--out", str(out)]
                            + ["--only=%s" % name for name in SCENARIOS],
                            capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = table_rows(out.read_text())
    # Every clstr row was measured (a failed run shows its note instead).
    # clstr 0.1.0 is a peer, timed even here when a bench run installed it.
    timed = {key: cells for key, cells in rows.items() if key[1].startswith("clstr")
             and key[1] != "clstr 0.1.0" and "n/a" not in cells[0]}
    for key, cells in timed.items():
        assert float(cells[0]) > 0 and cells[1], (key, cells)
    assert {tool for _, tool in timed} == {"clstr", "clstr --no-multiplex", "clstr -E",
                                           "clstr (ssh = fakessh)",
                                           "clstr -j template (ssh = fakessh)",
                                           "clstr --workers (exec = env)",
                                           "clstr.pyz --version (python3)",
                                           "clstr -E true --send"}, rows

    def counts(scenario, tool):
        logins, commands = rows[scenario, tool][4:6]
        return int(logins), int(commands)

    # Shared connections: a login per master (8 hosts, 10 sessions each);
    # each job one remote command, and each master at most one of its own
    # (the login shell probe: a run can end before a late master asks).
    for scenario, jobs in (("40 `true` jobs, 8 nodes", 40),
                           ("80 `true` jobs, 8 nodes x 4 slots", 80)):
        logins, commands = counts(scenario, "clstr")
        assert 1 <= logins <= 8, (scenario, logins)
        assert jobs <= commands <= jobs + logins, (scenario, logins, commands)
    # Direct connections: one login and one command per job.
    assert counts("40 `true` jobs, 8 nodes", "clstr --no-multiplex") == (40, 40)
    assert counts("`uname -n` once on 10 nodes", "clstr -E") == (10, 10)
    # --send: a master a node carries its copy and its job (and a probe).
    logins, commands = counts("a 5 MB file to 4 nodes", "clstr -E true --send")
    assert logins == 4 and 8 <= commands <= 12, (logins, commands)
