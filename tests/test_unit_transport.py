"""The transport seam without sshd: the masters' start-up policy
(transport/mux.py) driven by stand-in masters, and --dry-run rehearsing it."""

import errno

import pytest

from clstr.cli import make_plan
from clstr.dryrun import dry_run_lines
from clstr.failures import Failure, Kind
from clstr.nodes import NodePool
from clstr.transport.interface import RunEvents
from clstr.transport.mux import MuxTransport


class Masters:
    """Stand-in for multiplex.MasterSet: records starts; ``short`` makes
    the next start run out of processes."""

    def __init__(self):
        self.started = []
        self.done = {}
        self.short = False

    @property
    def live_count(self):
        return len(self.done)

    def start(self, host, group, on_done):
        if self.short:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        self.started.append((host, group))
        self.done[host, group] = on_done

    def login_shell_unknown(self, host, group):
        return None


class Events(RunEvents):
    def __init__(self):
        self.said = []

    def master_up(self, host, group, unavailable):
        self.said.append(("up", host, group))

    def master_failed(self, host, group, failure):
        self.said.append(("failed", host, group, failure.kind))

    def masters_short_of(self, covered, error):
        self.said.append(("short", covered))

    def note(self, text):
        pass


def mux(hosts, sessions_per_master=10):
    pool = NodePool(hosts)
    masters, events = Masters(), Events()
    transport = MuxTransport(pool, events, masters, None, sessions_per_master,
                             shuffle=lambda items: None)
    return transport, pool, masters, events


def test_masters_start_only_for_the_slots_in_demand():
    transport, pool, masters, _ = mux(["h%d" % n for n in range(300)])
    transport.prepare(lambda: 2)
    assert masters.started == [("h0", 0), ("h1", 0)]
    transport.prepare(lambda: 2)
    assert len(masters.started) == 2
    assert not pool.acquire()  # the slots wait for their masters


def test_a_host_gets_a_master_per_group_of_sessions():
    transport, _, masters, _ = mux(["h"] * 4, sessions_per_master=3)
    transport.prepare(lambda: 4)
    assert masters.started == [("h", 0), ("h", 1)]


def test_a_retired_hosts_slots_are_made_up_for_by_the_next_master():
    transport, pool, masters, _ = mux(["a", "b", "c"])
    transport.prepare(lambda: 1)
    pool.retire("a", Failure(Kind.REFUSED, "refused"))
    transport.prepare(lambda: 1)
    assert masters.started == [("a", 0), ("b", 0)]


def test_no_master_starts_for_a_retired_host():
    transport, pool, masters, _ = mux(["a", "b", "c"])
    pool.retire("b", Failure(Kind.REFUSED, "refused"))
    transport.prepare(lambda: 2)
    assert masters.started == [("a", 0), ("c", 0)]


def test_a_master_short_of_processes_waits_and_caps_the_masters():
    transport, _, masters, events = mux(["a", "b", "c", "d"])
    transport.prepare(lambda: 1)
    masters.short = True
    transport.prepare(lambda: 4)
    assert events.said == [("short", 1)] and transport.waiting_for_resources
    masters.short = False
    transport.prepare(lambda: 4)
    assert masters.started == [("a", 0)]  # nothing until something ends
    transport.resources_freed()
    transport.prepare(lambda: 4)
    # Tried again first, and no more at once than were up when it failed.
    assert masters.started == [("a", 0)]
    del masters.done["a", 0]
    transport.prepare(lambda: 4)
    assert masters.started == [("a", 0), ("b", 0)]


def test_a_master_that_cannot_start_ssh_is_a_failure_of_its_host():
    transport, _, masters, events = mux(["a"])

    def no_ssh(host, group, on_done):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")
    masters.start = no_ssh
    transport.prepare(lambda: 1)
    assert events.said == [("failed", "a", 0, Kind.SSH_ERROR)]


@pytest.mark.parametrize("args, masters", [
    (["-m", "1", "-n", "node[001-300]", "-j", "true", "-j", "true"], 1),
    (["-n", "node[001-030]", "-j", "true", "-j", "true"], 2),
    (["-n", "a", "-n", "a", "-n", "a", "-n", "a"] + ["-j", "true"] * 8, 1),
    (["--max-sessions", "2", "-n", "a", "-n", "a", "-n", "a", "-n", "a"] + ["-j", "true"] * 8, 2),
])
def test_dry_run_starts_the_masters_the_policy_starts(args, masters):
    plan, feed = make_plan(args)
    lines = list(dry_run_lines(plan, feed))
    shown = [line for line in lines if "ControlMaster=yes" in line]
    assert len(shown) == masters, lines
    # Masters first, then one line per job, each through a master shown.
    assert lines[:masters] == shown
    paths = {line.split("ControlPath=")[1].split()[0] for line in shown}
    jobs = lines[masters:]
    assert len(jobs) == args.count("-j")
    assert {line.split("ControlPath=")[1].split()[0] for line in jobs} == paths
