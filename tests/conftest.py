import os
import shutil
import sys
import tempfile

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


@pytest.fixture
def shared_dir():
    """A directory that jobs (run as the cluster's login user) and the test
    can both write: all "nodes" share this machine's file system, so a job
    can leave a flag there to act differently on its first attempt."""
    path = tempfile.mkdtemp(prefix="clstr-shared-", dir="/tmp")
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)
