"""Pure tier: node health's rules (nodehealth.py), one test each, driven by
synthetic events and a seeded RNG (no processes, no network, no clock)."""

import random

from clstr.failures import Failure, Kind, job_exit, not_delivered
from clstr.nodehealth import (
    MASTER_RESTARTS,
    MAX_THROTTLED,
    RETRY_COOLDOWN_MAX,
    THROTTLE_BACKOFF,
    THROTTLE_BACKOFF_MAX,
    Backoff,
    Direct,
    NodeHealth,
    Readmit,
    Reconnect,
    Retire,
)
from clstr.nodes import Host

REFUSED = Failure(Kind.REFUSED, "Connection refused")
THROTTLED = Failure(Kind.THROTTLED, "kex_exchange_identification: read: Connection reset")


class HighRng:
    """An RNG whose jitter is always the top of its range."""

    def uniform(self, low, high):
        return high


def host(name="a", running=0, retired=False):
    h = Host(name)
    h.running = running
    h.retired = retired
    return h


def health(**kwargs):
    return NodeHealth(random.Random(0), **kwargs)


def throttle_until_retired(node_health, node, group=None, limit=3 * MAX_THROTTLED):
    """How many throttled connections in a row retire ``node``."""
    for count in range(1, limit + 1):
        if group is None:
            [decision] = node_health.attempt_ended(node, THROTTLED)
        else:
            [decision] = node_health.master_started(node, group, THROTTLED)
        if isinstance(decision, Retire):
            return count
    return None


# -- retirement ----------------------------------------------------------------


def test_a_failed_connection_retires_its_node():
    assert health().attempt_ended(host(), REFUSED) == [Retire("a", REFUSED, None)]


def test_a_node_already_retired_is_not_retired_again():
    assert health().attempt_ended(host(retired=True), REFUSED) == []


def test_a_jobs_own_exit_retires_its_node_under_job_failure_node_only():
    exit_3 = job_exit(3)
    assert health().attempt_ended(host(), exit_3) == [Retire("a", exit_3, None)]
    assert health(job_failure="job").attempt_ended(host(), job_exit(3)) == []


def test_a_timeout_or_an_undelivered_command_never_retires_the_node():
    timeout = Failure(Kind.TIMEOUT, "stopped after 1s")
    for failure in (timeout, not_delivered(0, 200000)):
        assert health().attempt_ended(host(), failure) == []


def test_a_failed_master_retires_its_node():
    assert health().master_started(host(), 0, REFUSED) == [Retire("a", REFUSED, None)]


# -- throttling ------------------------------------------------------------------


def test_a_throttled_connection_backs_off_exponentially_with_jitter_up_to_a_cap():
    node_health = NodeHealth(HighRng())
    node = host(running=1)  # never retired meanwhile
    waits = [node_health.attempt_ended(node, THROTTLED)[0].seconds for _ in range(8)]
    assert waits[:3] == [THROTTLE_BACKOFF * 1.5, THROTTLE_BACKOFF * 3, THROTTLE_BACKOFF * 6]
    assert waits[-1] == THROTTLE_BACKOFF_MAX * 1.5
    low = [NodeHealth(random.Random(seed)).attempt_ended(host(), THROTTLED)[0].seconds
           for seed in range(20)]
    assert all(THROTTLE_BACKOFF * 0.5 <= wait <= THROTTLE_BACKOFF * 1.5 for wait in low)
    assert len(set(low)) > 1


def test_a_throttled_slot_rests_and_a_throttled_master_starts_again():
    node_health = health()
    [rest] = node_health.attempt_ended(host(), THROTTLED)
    [again] = node_health.master_started(host(), 2, THROTTLED)
    assert (type(rest), rest.group) == (Backoff, None)
    assert (type(again), again.group) == (Backoff, 2)


def test_throttled_too_often_in_a_row_with_nothing_running_is_retired():
    assert throttle_until_retired(health(), host()) == MAX_THROTTLED


def test_a_node_running_jobs_is_never_retired_for_throttling():
    assert throttle_until_retired(health(), host(running=1)) is None
    assert throttle_until_retired(health(), host(running=1), group=0) is None


def test_a_masters_throttling_counts_with_its_jobs_and_retires_alike():
    node_health = health()
    for _ in range(MAX_THROTTLED - 1):
        node_health.attempt_ended(host(), THROTTLED)
    [decision] = node_health.master_started(host(), 0, THROTTLED)
    assert decision == Retire("a", THROTTLED, None)


def test_a_job_that_succeeds_starts_the_throttle_count_afresh():
    node_health = health()
    for _ in range(4):
        for _ in range(MAX_THROTTLED - 1):
            assert isinstance(node_health.attempt_ended(host(), THROTTLED)[0], Backoff)
        node_health.attempt_ended(host(), None)
    assert throttle_until_retired(node_health, host()) == MAX_THROTTLED


def test_a_master_that_comes_up_starts_the_throttle_count_afresh():
    node_health = health()
    for _ in range(4):
        for _ in range(MAX_THROTTLED - 1):
            assert isinstance(node_health.master_started(host(), 0, THROTTLED)[0], Backoff)
        node_health.master_started(host(), 0, None)
    assert throttle_until_retired(node_health, host(), group=0) == MAX_THROTTLED


def test_a_throttled_masters_jitter_comes_from_the_rng_passed_in():
    waits = []
    for _ in range(2):
        random.seed(1)  # the module's own generator must play no part
        [decision] = NodeHealth(HighRng()).master_started(host(), 0, THROTTLED)
        waits.append(decision.seconds)
        random.random()
    assert waits == [THROTTLE_BACKOFF * 1.5] * 2


# -- --retry-nodes -------------------------------------------------------------------


def test_retry_nodes_probes_after_a_cooldown_that_doubles_up_to_its_cap():
    node_health = health(retry_after=100)
    cooldowns = [node_health.attempt_ended(host(), REFUSED)[0].probe_after for _ in range(5)]
    assert cooldowns == [100, 200, 400, RETRY_COOLDOWN_MAX, RETRY_COOLDOWN_MAX]
    # A cooldown longer than the cap is the user's: kept, never doubled.
    longer = health(retry_after=1000)
    assert [longer.attempt_ended(host(), REFUSED)[0].probe_after for _ in range(2)] == [1000] * 2


def test_retry_nodes_never_probes_a_node_retired_for_a_jobs_exit():
    assert health(retry_after=5).attempt_ended(host(), job_exit(1))[0].probe_after is None


def test_a_probed_node_gets_one_slot_until_a_job_succeeds_there_then_all():
    node_health = health(retry_after=5)
    node_health.attempt_ended(host(), REFUSED)
    assert node_health.probe("a") == [Readmit("a", None, True, False)]
    assert node_health.attempt_ended(host(), None) == [Readmit("a", None, False, True)]
    assert node_health.attempt_ended(host(), None) == []


def test_a_probed_node_with_masters_starts_them_and_each_readmits_its_slots():
    node_health = health(retry_after=5, masters=True)
    node_health.master_started(host(), 1, REFUSED)
    assert node_health.probe("a") == [Reconnect("a")]
    assert node_health.master_started(host(), 1, None) == [Readmit("a", 1, False, True)]
    assert node_health.attempt_ended(host(), None) == []


# -- connection sharing -------------------------------------------------------------


def test_a_master_up_readmits_its_slots():
    assert health().master_started(host(), 3, None) == [Readmit("a", 3, False, False)]


def test_a_master_that_cannot_share_means_direct_connections_said_once():
    node_health = health()
    first = node_health.master_started(host(), 0, None, "no control socket")
    second = node_health.master_started(host(), 1, None, "no control socket")
    assert first == [Direct("a", "no control socket", True), Readmit("a", 0, False, False)]
    assert second == [Direct("a", "no control socket", False), Readmit("a", 1, False, False)]


def test_a_masters_restarts_used_up_mean_direct_connections_idle_expiry_aside():
    node_health = health()
    for _ in range(5):
        assert node_health.master_gone("a", expired=True) == []
    for _ in range(MASTER_RESTARTS):
        assert node_health.master_gone("a", expired=False) == []
    [direct] = node_health.master_gone("a", expired=False)
    assert (type(direct), direct.news) == (Direct, True)
    assert node_health.master_gone("b", expired=False) == []
