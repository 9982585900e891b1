"""The plan of a run: everything the command line decided, checked and
resolved (cli.py builds it, the run and the dry run read it).

The annotations stay strings (``from __future__``), so that writing them in
today's syntax costs no ``typing`` import at start-up.

Frozen: nothing changes a plan once made.  ``cli.open_outputs`` opens the
files it names when a run really starts and returns a copy with the opened
fds and output directory filled in.
"""

from __future__ import annotations

import dataclasses

from .halt import HaltRule
from .transport.sshcommand import SshSettings
from .userfiles import InPlaceFile, OutputDir, ReplacedFile


@dataclasses.dataclass(frozen=True)
class Plan:
    # Where jobs run: every slot's host name (a host listed N times has N
    # slots).
    hosts: tuple
    # How to call ssh (its defaults are filled in even for --exec, which
    # does not use it).
    ssh: SshSettings
    # --on-each-node: one job per distinct host, pinned to it.
    pinned: bool = False
    # Share one connection per host (ControlMaster); never with --exec.
    multiplex: bool = False
    sessions_per_master: int = 10
    max_nodes: int = 0  # 0: one job per slot at once
    max_node_uses: int = 0  # 0: unlimited
    verbose: int = 0
    status: bool = False
    tag: bool = False
    group: bool = False
    # --gather: -E's outputs printed once per distinct output at the end.
    gather: bool = False
    # -k: lines and groups in job order (output/ordering.py).
    keep_order: bool = False
    dry_run: bool = False
    max_attempts: int = 0  # 0: never give a job up
    job_failure: str = "node"  # or "job"
    # --retries: a job's own failure runs it again, at most this many times
    # in all (0: no limit); None: not given.
    retries: int | None = None
    # --halt: when the run ends early; None: never.
    halt: HaltRule | None = None
    timeout: float | None = None
    retry_nodes: float = 0  # 0: a retired node stays retired
    # The --exec template's words, str (--slurm's srun too); None for ssh.
    exec_words: tuple | None = None
    # --slurm itself (not an --exec template naming srun).
    slurm: bool = False
    # --workers: a long-lived worker per slot runs the slot's jobs
    # (transport/workerpool.py); over ssh an ssh login per slot (no master).
    workers: bool = False
    # --env: (name, value) bytes pairs exported to every job, in order.
    env: tuple = ()
    # --workdir: where jobs run (bytes; ~ expanded on the node), or None.
    workdir: bytes | None = None
    # --send: sendfiles.SentFile each, copied to every node before its jobs.
    sends: tuple = ()
    # --return: each job's files (templates.Template each, filled in for a
    # job's attempt: returnfiles.py), fetched after its attempt completed.
    returns: tuple = ()
    # The outputs, as the user named them (None: clstr's own stdout, stderr;
    # no joblog, no output directory).
    stdout_path: str | None = None
    stderr_path: str | None = None
    joblog_path: str | None = None
    resume: bool = False
    output_dir_path: str | None = None
    # -A's file, resolved and checked, nothing opened yet.
    active_nodes: ReplacedFile | InPlaceFile | None = None
    # Filled in by cli.open_outputs once the run starts (None until then).
    stdout_fd: int | None = None
    stderr_fd: int | None = None
    output_dir: OutputDir | None = None
