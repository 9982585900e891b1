"""Node slots and the heap that hands them out.

Every listed node is one slot; a host listed N times has N slots and runs up
to N jobs at once.  Free slots are handed out least-loaded host first, ties
broken at random, so work spreads over hosts in a random order.
"""

import heapq
import random


class Host:
    """One machine: its free slots, how many jobs it runs, and whether it has
    been retired (and why)."""

    __slots__ = ("name", "slots", "free", "held", "slot_count", "running", "retired", "reason")

    def __init__(self, name):
        self.name = name
        self.slots = []  # all of them, whatever their state
        self.free = []
        self.held = []  # slots waiting for admit() (their connection is not up yet)
        self.slot_count = 0
        self.running = 0
        self.retired = False
        self.reason = None

    @property
    def usable(self):
        return not self.retired and bool(self.free or self.held or self.running)


class Slot:
    """One place to run one job at a time on ``host``; ``index`` counts the
    host's slots from 0."""

    __slots__ = ("host", "index", "uses", "busy")

    def __init__(self, host, index):
        self.host = host
        self.index = index
        self.uses = 0
        self.busy = False


class NodePool:
    """Hands out free slots of live hosts.  ``max_uses`` (0: unlimited) is how
    many jobs one slot may run before it is used up, as in clstr 0.1.0."""

    def __init__(self, hostnames, max_uses=0, rng=None):
        self._rng = rng or random.Random()
        self._max_uses = max_uses
        self._heap = []
        self.hosts = {}
        self.busy = 0
        for name in hostnames:
            host = self.hosts.get(name)
            if host is None:
                host = self.hosts[name] = Host(name)
            slot = Slot(host, host.slot_count)
            host.slots.append(slot)
            host.free.append(slot)
            host.slot_count += 1
        for host in self.hosts.values():
            self._push(host)

    def _push(self, host):
        # Entries are never updated in place: a stale one (its ``running``
        # no longer matches the host's) is skipped when popped, and the heap
        # is rebuilt when stale entries pile up.
        if len(self._heap) > 4 * len(self.hosts) + 64:
            self._heap = [(h.running, self._rng.random(), id(h), h)
                          for h in self.hosts.values() if h.free and not h.retired]
            heapq.heapify(self._heap)
        heapq.heappush(self._heap, (host.running, self._rng.random(), id(host), host))

    @property
    def live_slots(self):
        """Slots that can still run jobs: free ones plus busy ones."""
        return sum(len(h.free) + len(h.held) + h.running
                   for h in self.hosts.values() if not h.retired)

    def hold_every_slot(self):
        """Keep every free slot out of use until admit() (a transport whose
        connections are not up yet)."""
        for host in self.hosts.values():
            host.held.extend(host.free)
            host.free = []

    @property
    def waiting_for_admission(self):
        return any(h.held for h in self.hosts.values() if not h.retired)

    def admit(self, name, which=lambda slot: True):
        """Let held slots of host ``name`` (those for which ``which(slot)``)
        take jobs."""
        host = self.hosts[name]
        if host.retired:
            return
        admitted = [slot for slot in host.held if which(slot)]
        host.held = [slot for slot in host.held if not which(slot)]
        host.free.extend(admitted)
        if admitted:
            self._push(host)

    @property
    def usable(self):
        """True while some host could still run a job now or later."""
        return any(h.usable for h in self.hosts.values())

    def acquire(self):
        """Take a free slot on the least-loaded live host, or None."""
        while self._heap:
            running, _, _, host = heapq.heappop(self._heap)
            if host.retired or not host.free or running != host.running:
                continue
            return self._take(host)
        return None

    def acquire_on(self, name):
        """Take a free slot on host ``name``, or None."""
        host = self.hosts[name]
        if host.retired or not host.free:
            return None
        return self._take(host)

    def acquire_among(self, names):
        """Take a free slot on the least-loaded live host of ``names`` (ties
        at random), or None."""
        hosts = [self.hosts[name] for name in names]
        free = [host for host in hosts if host.free and not host.retired]
        if not free:
            return None
        return self._take(min(free, key=lambda host: (host.running, self._rng.random())))

    def _take(self, host):
        slot = host.free.pop()
        slot.busy = True
        slot.uses += 1
        host.running += 1
        self.busy += 1
        if host.free:
            self._push(host)
        return slot

    def put_back(self, slot):
        """Return a slot that was taken but not used."""
        slot.uses -= 1
        self.release(slot)

    def _job_ended(self, slot):
        slot.busy = False
        slot.host.running -= 1
        self.busy -= 1
        return slot.host

    def release(self, slot):
        """Give back a slot whose job has ended."""
        host = self._job_ended(slot)
        if host.retired or (self._max_uses and slot.uses >= self._max_uses):
            return
        host.free.append(slot)
        self._push(host)

    def hold(self, slot):
        """End a slot's job but keep the slot out of use until admit()."""
        host = self._job_ended(slot)
        if not host.retired:
            host.held.append(slot)

    def retire(self, name, reason):
        """Give ``name`` no more work; its running jobs may finish."""
        host = self.hosts[name]
        if not host.retired:
            host.retired = True
            host.reason = reason
            host.free = []
            host.held = []

    def reinstate(self, name):
        """Bring a retired host back with its idle slots held, waiting for
        admit(); returns how many slots it got back.  A host with none left
        (all used up by --max-node-uses) stays retired."""
        host = self.hosts[name]
        usable = [slot for slot in host.slots if not slot.busy
                  and not (self._max_uses and slot.uses >= self._max_uses)]
        if usable:
            host.retired = False
            host.reason = None
            host.held = usable
        return len(usable)

    def retired_hosts(self):
        return [h for h in self.hosts.values() if h.retired]
