"""A host's preparation for --send (nodecare.py, sendfiles.py), driven by
synthetic events: its slots wait for its files, which go once per host
however many of its masters come up, and a host that cannot take them is
retired."""

import random

from clstr.failures import Failure, Kind
from clstr.nodecare import NodeCare
from clstr.nodehealth import NodeHealth
from clstr.nodes import NodePool


class Loop:
    def __init__(self):
        self.timers = []

    def call_later(self, delay, callback):
        self.timers.append(callback)


class Transport:
    """A master per slot (``--max-sessions 1``), or none."""

    def __init__(self, has_masters=True):
        self.has_masters = has_masters

    def master_of(self, slot):
        return slot.index


class Sends:
    """Records where copies start; the test says when they end."""

    def __init__(self):
        self.started = []
        self.running = set()
        self.sent = set()

    def ready(self, name):
        return name in self.sent

    def busy(self, name):
        return name in self.running

    def start(self, slot):
        self.started.append(slot)
        self.running.add(slot.host.name)


def finish(sends, nodes, name, failure=None):
    """Host ``name``'s copies end with ``failure`` (None: all there)."""
    sends.running.discard(name)
    if failure is None:
        sends.sent.add(name)
    nodes.sent(name, failure)


def care(hosts, job_failure="node", masters=True):
    pool = NodePool(hosts, rng=random.Random(1))
    sends = Sends()
    dispatched = []
    nodes = NodeCare(Loop(), pool, Transport(masters), NodeHealth(random.Random(1), job_failure,
                                                                   masters=masters),
                     lambda text: None, lambda: dispatched.append(True), lambda: False, sends)
    if masters:
        pool.hold_every_slot()
    return pool, sends, nodes


def free_slots(pool):
    slots = []
    while True:
        slot = pool.acquire()
        if slot is None:
            return slots
        slots.append(slot)


def test_slots_wait_for_the_files_and_a_host_gets_them_once_whatever_masters_come_up():
    pool, sends, nodes = care(["h"] * 3)
    nodes.master_started("h", 0, None)
    nodes.master_started("h", 1, None)  # up while the first one sends
    assert [slot.index for slot in sends.started] == [0]
    assert free_slots(pool) == []
    finish(sends, nodes, "h")
    nodes.master_started("h", 2, None)  # up once the files are there
    assert len(sends.started) == 1
    assert sorted(slot.index for slot in free_slots(pool)) == [0, 1, 2]


def test_without_masters_every_host_is_sent_its_files_at_the_start():
    pool, sends, nodes = care(["a", "a", "b"], masters=False)
    nodes.start()
    assert sorted(slot.host.name for slot in sends.started) == ["a", "b"]
    assert free_slots(pool) == []
    finish(sends, nodes, "b")
    assert [slot.host.name for slot in free_slots(pool)] == ["b"]


def test_a_host_that_cannot_take_its_files_is_retired_even_under_job_failure_job():
    pool, sends, nodes = care(["h", "g"], job_failure="job")
    nodes.master_started("h", 0, None)
    finish(sends, nodes, "h", Failure(Kind.FILE, "No space left on device"))
    host = pool.hosts["h"]
    assert host.retired and str(host.reason) == "file: No space left on device"
    assert pool.hosts["h"].held == []


def test_a_throttled_copy_rests_and_is_sent_again():
    pool, sends, nodes = care(["h"])
    nodes.master_started("h", 0, None)
    finish(sends, nodes, "h", Failure(Kind.THROTTLED, "session refused"))
    assert not pool.hosts["h"].retired and free_slots(pool) == []
    nodes._loop.timers.pop()()
    assert len(sends.started) == 2
