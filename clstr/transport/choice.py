"""The one place that chooses a run's transport from its plan (transport/interface.py
says what a transport does)."""

import os
import random

from .exec import ExecTransport
from .slurm import SlurmTransport
from .workerpool import WorkerTransport


def transport_for(plan, loop, private, pool, events, masters=None, shuffle=random.shuffle):
    """The Transport that runs ``plan``'s attempts under ``loop``, naming
    its files in ``private`` (privatedir.PrivateDirectory), for the slots of
    ``pool`` (nodes.NodePool) and telling ``events`` (transport.RunEvents)
    about its masters.  ``masters``: the masters' owner (None: a
    masters.MasterSet); ``shuffle(items)``: the order masters start in
    (--dry-run gives stand-ins for both)."""
    if plan.exec_words:
        if plan.slurm:
            base = SlurmTransport(plan.exec_words, loop, os.environ.get("SLURM_JOB_ID", ""))
        else:
            base = ExecTransport(plan.exec_words, loop)
        return WorkerTransport(base, loop, plan) if plan.workers else base
    # Imported here: an --exec or --slurm run, which starts in a few tenths
    # of a second, need not load ssh's masters and mux client (~6 ms).
    from .masters import MasterSet
    from .mux import MuxTransport
    from .ssh import SshTransport
    transport = SshTransport(plan.ssh, loop, private)
    if plan.multiplex:
        if masters is None:
            masters = MasterSet(loop, plan.ssh, private.path)
        transport = MuxTransport(pool, events, masters, transport, plan.sessions_per_master,
                                 shuffle)
    return WorkerTransport(transport, loop, plan) if plan.workers else transport
