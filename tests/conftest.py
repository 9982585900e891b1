import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import SSHD, LoopbackCluster  # noqa: E402

# Under CI (CI set in the environment, as .ci/run does) a skipped test is a
# failed test: a CI that passes because sshd or openssl went missing proves
# nothing.  These are the only exceptions, by test id (parameters left out),
# each with the reason it may be skipped anywhere.
ALLOWED_SKIPS = {
    "test_packaging.py::test_package_imports_only_the_standard_library":
        "sys.stdlib_module_names needs Python 3.10; vermin still checks 3.8 on older ones",
    # A machine without pyenv's old Pythons still runs the entry point under
    # a faked sys.version_info (test_userfiles.py's other old-Python tests).
    "test_userfiles.py::test_a_real_old_python_is_told_it_is_too_old":
        "needs a Python older than 3.8 on the machine",
}


def _under_ci():
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and _under_ci()) or hasattr(report, "wasxfail"):
        return
    test_id = "%s::%s" % (os.path.basename(str(item.fspath)), item.originalname)
    if test_id in ALLOWED_SKIPS:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = ("skipped under CI, which allows no skip but those in "
                       "tests/conftest.py's ALLOWED_SKIPS: %s" % reason)


@pytest.fixture(scope="session")
def cluster():
    """One loopback sshd cluster for the whole test session."""
    if not os.path.exists(SSHD):
        pytest.skip("%s not installed (apt-get install openssh-server)" % SSHD)
    with LoopbackCluster() as running:
        yield running


@pytest.fixture(scope="module")
def throttled_cluster():
    """An sshd with the stock MaxStartups: beyond 10 unauthenticated
    connections it starts dropping new ones."""
    with LoopbackCluster(max_startups="10:30:100") as running:
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
