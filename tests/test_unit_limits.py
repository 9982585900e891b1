"""limits.py: which errors mean this machine is out of resources (errno
alone), what the user is told, and how long a run with nothing running
keeps trying."""

import errno
import resource

import pytest

from clstr.errors import LocalIOError
from clstr.limits import GIVE_UP_AFTER, RETRY_MAX, Shortage, limit_words, out_of_resources


@pytest.mark.parametrize("number", [errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM])
def test_running_out_of_fds_processes_or_memory_is_out_of_resources(number):
    assert out_of_resources(OSError(number, "whatever the text"))
    assert out_of_resources(LocalIOError("out.txt", OSError(number, "x")))


@pytest.mark.parametrize("number", [errno.ENOENT, errno.EACCES, errno.ENOSPC, errno.EPIPE])
def test_other_errors_are_not_out_of_resources(number):
    assert not out_of_resources(OSError(number, "Too many open files"))  # errno, not words


def test_each_limit_is_named_with_how_to_raise_it():
    assert limit_words(OSError(errno.EMFILE, "x")).endswith("(raise it with ulimit -n)")
    assert limit_words(None).startswith("the open-files limit is ")
    processes = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    assert limit_words(OSError(errno.EAGAIN, "x")) == (
        "the system's process limit is reached (raise kernel.threads-max)"
        if processes == resource.RLIM_INFINITY else
        "the process limit is %d (raise it with ulimit -u)" % processes)
    assert "fs.file-max" in limit_words(OSError(errno.ENFILE, "x"))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_with_something_running_a_shortage_waits_for_it_to_end():
    shortage = Shortage(Clock())
    assert shortage.failed(running=True) is None


def test_with_nothing_running_it_backs_off_then_gives_up_after_the_limit():
    clock = Clock()
    shortage = Shortage(clock)
    delays = []
    while True:
        delay = shortage.failed(running=False)
        if delay is Shortage.GIVE_UP:
            break
        assert 0 < delay <= RETRY_MAX
        delays.append(delay)
        clock.now += delay
    assert delays[1] == 2 * delays[0]
    assert sum(delays) == pytest.approx(GIVE_UP_AFTER)


def test_anything_started_starts_the_count_again():
    clock = Clock()
    shortage = Shortage(clock)
    shortage.failed(running=False)
    clock.now += GIVE_UP_AFTER - 1
    shortage.eased()
    clock.now += 2
    assert shortage.failed(running=False) is not Shortage.GIVE_UP
