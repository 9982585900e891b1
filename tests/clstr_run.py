"""Running clstr from the source tree in tests."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clstr_argv(cluster, *args):
    return [sys.executable, "-m", "clstr", "--ssh-command", cluster.ssh_command] + list(args)


def clstr(cluster, *args, timeout=120, **kwargs):
    """Run clstr against the loopback cluster; returns the CompletedProcess."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(clstr_argv(cluster, *args), cwd=REPO, capture_output=True,
                          timeout=timeout, **kwargs)


def start_clstr(cluster, *args, **kwargs):
    """Start clstr in the background; the caller waits for it."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(clstr_argv(cluster, *args), cwd=REPO, **kwargs)


def node_args(names):
    args = []
    for name in names:
        args += ["-n", name]
    return args
