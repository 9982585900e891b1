import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import SSHD, LoopbackCluster  # noqa: E402


@pytest.fixture(scope="session")
def cluster():
    """One loopback sshd cluster for the whole test session."""
    if not os.path.exists(SSHD):
        if os.environ.get("CI"):
            pytest.fail("%s is missing: .ci/run should have installed openssh-server" % SSHD)
        pytest.skip("%s not installed (apt-get install openssh-server)" % SSHD)
    with LoopbackCluster() as running:
        yield running
