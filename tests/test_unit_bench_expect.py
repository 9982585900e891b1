"""What the bench accepts as proof that a tool ran as configured."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))

from bench import Expect, exactly, masters_up  # noqa: E402


def test_a_run_that_ends_before_its_last_master_is_up_is_as_configured():
    # 40 jobs on 8 nodes: a master still logging in when the other seven
    # have run every job is neither a login nor a probe.
    clstr = Expect(masters_up(8), exactly(40), commands_per_login=1)
    assert clstr.problem(8, 48) is None
    assert clstr.problem(7, 47) is None
    assert clstr.problem(7, 40) is None


def test_more_logins_than_masters_or_a_job_short_or_extra_is_a_contradiction():
    clstr = Expect(masters_up(8), exactly(40), commands_per_login=1)
    assert clstr.problem(9, 49) == "9 logins, expected 1-8"
    assert clstr.problem(8, 39) == "39 remote commands, expected 40-48"
    # Seven logins allow seven probes, not eight: the 48th command is a job
    # run twice.
    assert clstr.problem(7, 48) == "48 remote commands, expected 40-47"
    assert Expect(exactly(40), exactly(40)).problem(40, 41) == "41 remote commands, expected 40"
