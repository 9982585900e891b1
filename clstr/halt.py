"""--halt: when a run ends early, as GNU parallel's ``--halt WHEN,WHAT=N``
decides it.  Pure: parsing the option and testing the rule; the scheduler
counts the jobs (scheduler.py) and the run stops them (run.py).

WHEN is ``soon`` (start no new job, let the running ones finish) or ``now``
(stop the running ones too, as Ctrl-C does).  WHAT is ``fail=N`` or
``success=N``: N jobs failed (given up) or completed, or ``N%`` of all the
jobs.  GNU parallel reads its whole input before it starts a job when given
a percentage; clstr starts jobs as their lines arrive, so a percentage is
tested only once the total is known: from the start for ``-j`` and regular
job files, at the end of its input for a pipe or FIFO.
"""

import collections
import re

# GNU parallel's older forms of --halt, still accepted by it (its manual:
# "For backwards compatibility these also work").
SHORT_FORMS = {"0": "never", "1": "soon,fail=1", "2": "now,fail=1",
               "-1": "soon,success=1", "-2": "now,success=1"}
_FORM = re.compile(r"(soon|now),(fail|success)=([0-9]+)(%?)")


class HaltRule(collections.namedtuple("HaltRule", "when what count percent")):
    """``when``: "soon" or "now"; ``what``: "fail" or "success"; ``count``:
    N, a number of jobs or (``percent``) a percentage of all the jobs."""

    __slots__ = ()

    def __str__(self):
        return "%s,%s=%d%s" % (self.when, self.what, self.count, "%" * self.percent)

    def met(self, counted, total, known):
        """Whether ``counted`` jobs (failed or completed, as ``what`` says)
        meet the rule, out of ``total`` jobs (``known``: that is all there
        will be; a percentage of a total still growing is not tested)."""
        if not self.percent:
            return counted >= self.count
        # GNU parallel's test: counted >= total * N / 100, in whole numbers.
        return known and counted > 0 and counted * 100 >= self.count * total


class Halted(collections.namedtuple("Halted", "rule job host failure")):
    """The rule was met by ``job``'s end on ``host`` (``failure`` None: it
    completed)."""

    __slots__ = ()

    @property
    def succeeded(self):
        """The run reached what it was for (``success=``): exit status 0."""
        return self.rule.what == "success"


def parse_halt(text, max_count):
    """The HaltRule that --halt's ``text`` says, or None for ``never``; a
    count is at most ``max_count``.  Raises ValueError with the reason."""
    spelled = SHORT_FORMS.get(text, text)
    if re.fullmatch(r"[0-9]+%", spelled):
        spelled = "soon,fail=" + spelled  # GNU parallel's --halt 5%
    if spelled == "never":
        return None
    if re.fullmatch(r"(soon|now),done=[0-9]+%?", spelled):
        raise ValueError("%r: done=N is not supported; use fail=N or success=N" % text)
    match = _FORM.fullmatch(spelled)
    if match is None:
        raise ValueError("%r: expected WHEN,WHAT=N: WHEN soon or now, WHAT fail or success, "
                         "N a count or a percentage (e.g. now,fail=1 or soon,fail=10%%), "
                         "or never" % text)
    when, what, count, percent = match.groups()
    count = int(count)
    if count < 1 or count > (100 if percent else max_count):
        raise ValueError("%r: N must be from 1 to %s" % (text, "100%" if percent else max_count))
    return HaltRule(when, what, count, bool(percent))
