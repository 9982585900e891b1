"""Pure tier: parsing, classification and scheduling rules, driven by
synthetic events (no processes, no network)."""

import os
import random

import pytest

from clstr.failures import (
    TAIL_BYTES,
    Failure,
    Kind,
    MasterKilled,
    MuxError,
    classify,
    classify_allocation,
    classify_master,
    classify_mux,
    job_exit,
    not_delivered,
    read_log_tail,
    refused_log_file,
    start_overdue,
    timed_out,
)
from clstr.halt import HaltRule, parse_halt
from clstr.jobs import Job, JobFeed, numbered_job_lines, open_job_file
from clstr.nodes import NodePool
from clstr.nodeset import NodeSpecError, expand, parse_node_lines, validate_host
from clstr.output.delivery import tag_lines
from clstr.records import completed_in_joblog, joblog_line, run_report
from clstr.scheduler import Scheduler
from clstr.status import active_nodes_text, status_text
from clstr.transport.sshcommand import SshSettings
from clstr.transport.wrapper import shell_quote

# -- node specs ---------------------------------------------------------------


def test_ranges_keep_zero_padding_and_lists():
    assert expand("lab[01-03,09]") == ["lab01", "lab02", "lab03", "lab09"]
    assert expand("e-c07kilf[901-903]") == ["e-c07kilf901", "e-c07kilf902", "e-c07kilf903"]


def test_padding_comes_from_the_low_bound_and_grows_past_it():
    names = expand("node[08-100]")
    assert names[:3] == ["node08", "node09", "node10"]
    assert names[-2:] == ["node99", "node100"]
    assert len(names) == 93


def test_several_groups_expand_in_order_and_user_is_kept():
    assert expand("r[1-2]n[1,3]") == ["r1n1", "r1n3", "r2n1", "r2n3"]
    assert expand("me@h[1-2]") == ["me@h1", "me@h2"]
    assert expand("a,b[1-2]") == ["a", "b1", "b2"]


@pytest.mark.parametrize("spec", ["lab[5-1]", "lab[]", "lab[1-2", "lab1-2]", "lab[a]",
                                  "x[[1]]", "a,,b", "n[1-1000000]"])
def test_malformed_range_is_an_error_naming_the_text(spec):
    with pytest.raises(NodeSpecError) as error:
        expand(spec)
    assert spec in str(error.value)


@pytest.mark.parametrize("name", ["-oProxyCommand=touch x", "a b", "a;b", "$(x)", "`x`", "a'b",
                                  ""])
def test_a_hostname_can_never_become_an_option_or_shell_syntax(name):
    with pytest.raises(NodeSpecError):
        validate_host(name)


@pytest.mark.parametrize("name", ["user@host", "host.example.org", "10.1.2.3", "::1",
                                  "fe80::1%eth0", "e-c07kilf901"])
def test_ordinary_hostnames_are_accepted(name):
    assert validate_host(name) == name


@pytest.mark.parametrize("spec, names", [
    ("[::1]", ["::1"]),
    ("me@[::1]", ["me@::1"]),
    ("[fe80::1%eth0]", ["fe80::1%eth0"]),
    ("[2001:db8::1],lab[1-2]", ["2001:db8::1", "lab1", "lab2"]),
])
def test_an_address_in_brackets_loses_its_brackets(spec, names):
    assert [validate_host(name) for name in expand(spec)] == names


@pytest.mark.parametrize("spec", ["lab[::1]", "[::1]x", "[1-2,::1]", "[1:2][3]"])
def test_a_bracket_body_with_a_colon_is_never_a_range(spec):
    with pytest.raises(NodeSpecError, match="address in brackets"):
        expand(spec)


def test_n_slash_host_gives_each_host_n_slots_as_gnu_parallel_writes_it():
    assert expand("4/h1") == ["h1"] * 4
    assert expand("2/lab[1-2]") == ["lab1", "lab1", "lab2", "lab2"]
    # Each comma-separated part has its own count.
    assert expand("2/a,b,3/c") == ["a", "a", "b", "c", "c", "c"]
    assert expand("1/h") == ["h"]


@pytest.mark.parametrize("spec, names", [
    ("2/user@h", ["user@h", "user@h"]),
    ("2/me@h[1-2]", ["me@h1", "me@h1", "me@h2", "me@h2"]),
    ("2/[::1]", ["::1", "::1"]),
    ("2/me@[fe80::1%eth0]", ["me@fe80::1%eth0"] * 2),
])
def test_n_slash_host_keeps_user_and_address_forms(spec, names):
    assert [validate_host(name) for name in expand(spec)] == names


@pytest.mark.parametrize("spec, count", [("0/h", "0"), ("x/h", "x"), ("-1/h", "-1"),
                                         ("/h", ""), ("1.5/h", "1.5"), ("user@4/h", "user@4"),
                                         ("a,0/lab[1-2]", "0")])
def test_a_bad_slot_count_is_an_error_naming_the_spec(spec, count):
    with pytest.raises(NodeSpecError) as error:
        expand(spec)
    assert str(error.value).startswith("bad slot count %r in node spec %r" % (count, spec))


def test_a_slot_count_with_no_host_is_an_error():
    with pytest.raises(NodeSpecError, match="no host after '4/' in node spec '4/'"):
        expand("4/")


def test_slots_count_against_the_limit_on_names():
    assert len(expand("10/n[1-10000]")) == 100000
    with pytest.raises(NodeSpecError, match="too many names"):
        expand("50000/n[1-3]")


def test_node_file_takes_slots_and_a_bad_count_names_file_and_line():
    assert parse_node_lines(["4/a\n", "2/b[1-2]  # two each\n"], "nodes.txt") == (
        ["a"] * 4 + ["b1", "b1", "b2", "b2"])
    with pytest.raises(NodeSpecError) as error:
        parse_node_lines(["a\n", "\n", "x/b\n"], "nodes.txt")
    assert str(error.value).startswith("nodes.txt:3: bad slot count 'x'")


def test_ssh_times_are_whole_numbers_ssh_accepts():
    options = SshSettings(connect_timeout=1000000, alive_interval=1000000).default_options()
    assert "ConnectTimeout=1000000" in options and "ServerAliveInterval=1000000" in options


def test_node_file_skips_comments_and_blank_lines_and_keeps_duplicates():
    lines = ["# lab\n", "\n", "a\r\n", "a  # twice: two slots\n", "b[1-2]\n"]
    assert parse_node_lines(lines, "nodes.txt") == ["a", "a", "b1", "b2"]


def test_node_file_error_names_file_and_line():
    with pytest.raises(NodeSpecError) as error:
        parse_node_lines(["good\n", "bad[2-1]\n"], "nodes.txt")
    assert str(error.value).startswith("nodes.txt:2: ")


# -- ssh ----------------------------------------------------------------------


def test_user_options_come_first_and_the_host_follows_double_dash():
    argv = SshSettings(["ssh", "-F", "cfg"], ["ConnectTimeout=1"]).argv("-oProxyCommand=x", b"ls")
    assert argv[:5] == ["ssh", "-F", "cfg", "-o", "ConnectTimeout=1"]
    assert "BatchMode=yes" in argv
    assert argv.index("ConnectTimeout=1") < argv.index("ConnectTimeout=5")
    assert argv[-3:-1] == ["--", "-oProxyCommand=x"]


def test_shell_quote_survives_quotes_and_any_bytes():
    import subprocess
    word = b"it's \"quoted\" $HOME `x` \xff\n"
    out = subprocess.run([b"sh", b"-c", b"printf %s " + shell_quote(word)],
                         capture_output=True, check=True).stdout
    assert out == word

# -- failures -----------------------------------------------------------------


@pytest.mark.parametrize("stderr, kind", [
    (b"ssh: connect to host h port 22: Connection refused\r\n", Kind.REFUSED),
    (b"ssh: connect to host h port 22: Connection timed out\r\n", Kind.CONNECT_TIMEOUT),
    (b"Connection timed out during banner exchange\r\n", Kind.CONNECT_TIMEOUT),
    (b"u@h: Permission denied (publickey).\r\n", Kind.AUTH),
    (b"Host key verification failed.\r\n", Kind.HOST_KEY),
    (b"ssh: Could not resolve hostname nope: Name or service not known\r\n", Kind.UNRESOLVED),
    (b"kex_exchange_identification: read: Connection reset by peer\r\n"
     b"Connection reset by 127.0.0.1 port 22\r\n", Kind.THROTTLED),
    (b"Timeout, server h not responding.\r\n", Kind.CONNECTION_LOST),
    (b"Connection to h closed by remote host.\r\n", Kind.CONNECTION_LOST),
    (b"something new\r\n", Kind.SSH_ERROR),
])
def test_ssh_failures_are_named_from_its_stderr(stderr, kind):
    failure = classify(255, b"job noise\n" + stderr)
    assert failure.kind is kind
    assert failure.detail in stderr.decode()


def test_job_exit_is_told_apart_from_ssh_failure():
    assert classify(0, b"") is None
    failure = classify(3, b"Connection refused\n")
    assert failure.kind is Kind.JOB_EXIT and str(failure) == "job exit 3"
    assert not failure.kind.transport and Kind.REFUSED.transport


def test_a_mux_client_whose_master_has_gone_lost_its_connection():
    assert classify(255, b"", master_gone=True).kind is Kind.CONNECTION_LOST


REFUSED_LOG = b"ssh: connect to host h port 22: Connection refused\n"


def test_a_master_that_cannot_reach_its_host_is_the_hosts_failure():
    failure, unavailable = classify_master(255, REFUSED_LOG, has_socket=False)
    assert failure.kind is Kind.REFUSED and unavailable is None


def test_a_throttled_master_is_the_hosts_failure_to_back_off_from():
    log = b"kex_exchange_identification: read: Connection reset by peer\n"
    failure, unavailable = classify_master(255, log, has_socket=False)
    assert failure.kind is Kind.THROTTLED and unavailable is None


@pytest.mark.parametrize("code, log, has_socket, why", [
    (0, b"", False, "the master exited without a control socket"),
    (255, b"front end: unknown option ControlMaster\n", False,
     "the master failed: front end: unknown option ControlMaster"),
])
def test_a_master_that_cannot_share_means_direct_connections_not_a_failure(code, log, has_socket,
                                                                          why):
    assert classify_master(code, log, has_socket) == (None, why)


def test_a_master_up_with_its_socket_is_no_failure():
    assert classify_master(0, b"Authenticated to h\n", has_socket=True) == (None, None)


def test_a_refused_mux_session_is_throttled_and_a_dropped_one_lost():
    refused = classify_mux(MuxError.SESSION_REFUSED, "Session open refused by peer")
    assert (refused.kind, refused.detail) == (Kind.THROTTLED,
                                              "session refused: Session open refused by peer")
    lost = classify_mux(MuxError.CONNECTION_LOST, "EOF")
    assert (lost.kind, lost.detail) == (Kind.CONNECTION_LOST, "shared connection lost: EOF")
    assert str(classify_mux(MuxError.ABANDONED, "")) == "interrupted: stopped by clstr"


def test_a_session_on_a_killed_master_is_lost_whatever_the_master_said():
    failure = classify_mux(MuxError.SESSION_REFUSED, "x", master_killed="frozen; killed")
    assert isinstance(failure, MasterKilled) and str(failure) == "connection lost: frozen; killed"


def test_a_start_overdue_under_slurm_is_a_pending_step_not_a_dead_node():
    assert start_overdue(20, slurm=True).kind is Kind.THROTTLED
    overdue = start_overdue(20, slurm=False)
    assert str(overdue) == "connect timeout: the job had not started after 20s"


@pytest.mark.parametrize("code, said, fatal", [
    (0, b"RUNNING\n", False),
    (0, b"", True),
    (0, b"COMPLETING\n", True),
    (1, b"slurm_load_jobs error: Invalid job id specified\n", True),
    (1, b"slurm_load_jobs error: Unable to contact slurm controller\n", False),
])
def test_only_slurms_word_that_the_allocation_ended_stops_the_run(code, said, fatal):
    failure = classify_allocation("7", code, said)
    assert (failure is not None and failure.kind is Kind.FATAL) is fatal


def test_an_allocation_that_ended_is_named_with_its_state():
    assert classify_allocation("7", 0, b"COMPLETING\n").detail == "Slurm allocation 7 is COMPLETING"
    assert classify_allocation("7", 0, b"").detail == "Slurm allocation 7 is gone"


@pytest.mark.parametrize("code, stdout_seen, stderr, refused", [
    (255, False, b"", True),
    (1, False, b"front: unknown option -- E\n", True),
    (1, False, b"job failed\n", False),
    (255, True, b"", False),
    (0, False, b"", False),
])
def test_an_ssh_front_end_refused_its_log_file_only_on_evidence(code, stdout_seen, stderr,
                                                                refused):
    assert refused_log_file(code, stdout_seen, stderr) is refused


def test_a_log_tail_is_its_last_bytes_and_a_missing_log_is_silence(tmp_path):
    log = tmp_path / "ssh.log"
    log.write_bytes(b"x" * TAIL_BYTES + b"the end\n")
    assert read_log_tail(str(log)) == (b"x" * TAIL_BYTES + b"the end\n")[-TAIL_BYTES:]
    assert read_log_tail(str(log), remove=True).endswith(b"the end\n")
    assert not log.exists() and read_log_tail(str(log)) == b""

# -- slots and scheduling -----------------------------------------------------


def test_each_listing_is_a_slot_and_the_least_loaded_host_goes_first():
    pool = NodePool(["a", "a", "a", "b"], rng=random.Random(1))
    first = pool.acquire()
    second = pool.acquire()
    assert {first.host.name, second.host.name} == {"a", "b"}
    assert pool.acquire().host.name == "a"
    assert pool.acquire().host.name == "a"
    assert pool.acquire() is None


def test_ties_are_broken_at_random():
    firsts = {NodePool(["a", "b", "c", "d"], rng=random.Random(seed)).acquire().host.name
              for seed in range(40)}
    assert firsts == {"a", "b", "c", "d"}


def test_max_uses_retires_a_slot_after_that_many_jobs():
    pool = NodePool(["a"], max_uses=2)
    for _ in range(2):
        slot = pool.acquire()
        pool.release(slot)
    assert pool.acquire() is None and not pool.usable


def feed_of(*commands):
    return JobFeed([c.encode() for c in commands])


def test_failure_requeues_the_job_to_run_elsewhere():
    # The node's retirement is node health's (test_unit_nodehealth.py).
    pool = NodePool(["a", "b"], rng=random.Random(0))
    scheduler = Scheduler(pool, feed_of("x"))
    job, slot = scheduler.next_assignment()
    outcome = scheduler.attempt_finished(job, slot, Failure(Kind.REFUSED, "refused"))
    assert outcome.requeued and not outcome.gave_up
    pool.retire(slot.host.name, "refused")
    again, other = scheduler.next_assignment()
    assert again is job and other.host is not slot.host
    scheduler.attempt_finished(again, other, None)
    assert scheduler.completed == 1 and scheduler.done()


def test_job_failure_job_fails_only_the_job():
    pool = NodePool(["a"])
    scheduler = Scheduler(pool, feed_of("x", "y"), job_failure="job")
    job, slot = scheduler.next_assignment()
    outcome = scheduler.attempt_finished(job, slot, job_exit(1))
    assert outcome.gave_up and not outcome.requeued
    assert scheduler.next_assignment() is not None


def test_a_job_not_delivered_fails_alone_even_under_job_failure_node():
    pool = NodePool(["a"])
    scheduler = Scheduler(pool, feed_of("x", "y"))
    job, slot = scheduler.next_assignment()
    outcome = scheduler.attempt_finished(job, slot, not_delivered(0, 200000))
    assert outcome.gave_up and not outcome.requeued
    assert scheduler.next_assignment() is not None


def test_max_attempts_gives_up_after_that_many_nodes():
    pool = NodePool(["a", "b", "c"])
    scheduler = Scheduler(pool, feed_of("x"), max_attempts=2)
    outcomes = []
    for _ in range(2):
        job, slot = scheduler.next_assignment()
        outcomes.append(scheduler.attempt_finished(job, slot, Failure(Kind.JOB_EXIT, "e")))
        pool.retire(slot.host.name, "job exit")  # as node health says
    assert [o.gave_up for o in outcomes] == [False, True]
    assert scheduler.not_completed() == [job] and pool.usable


def test_a_throttled_job_goes_first_again_and_its_slot_rests():
    pool = NodePool(["a", "b"], rng=random.Random(0))
    scheduler = Scheduler(pool, feed_of("x", "y"))
    job, slot = scheduler.next_assignment()
    outcome = scheduler.attempt_finished(job, slot, Failure(Kind.THROTTLED, "kex"))
    assert outcome.requeued and slot in slot.host.held
    again, other = scheduler.next_assignment()
    assert again is job and other.host is not slot.host


def test_max_running_caps_jobs_at_once():
    scheduler = Scheduler(NodePool(["a", "b", "c"]), feed_of("x", "y", "z"), max_running=2)
    assert scheduler.next_assignment() and scheduler.next_assignment()
    assert scheduler.next_assignment() is None


def test_pinned_jobs_run_on_their_host_and_are_not_rerun_elsewhere():
    pool = NodePool(["a", "b"])
    feed = JobFeed()
    feed.add_pinned(b"uname", ["a", "b"])
    scheduler = Scheduler(pool, feed)
    (job_a, slot_a), (job_b, slot_b) = scheduler.next_pinned_assignment(), \
        scheduler.next_pinned_assignment()
    assert {(job_a.host, slot_a.host.name), (job_b.host, slot_b.host.name)} == {("a", "a"),
                                                                                ("b", "b")}
    outcome = scheduler.attempt_finished(job_a, slot_a, Failure(Kind.REFUSED, "r"))
    assert outcome.gave_up and not outcome.requeued

# -- jobs, records, status, tags ---------------------------------------------


def test_job_lines_lose_newline_and_cr_and_blank_lines_but_keep_bytes():
    assert [command for _, command in numbered_job_lines(b"a\r\n\n  \nb \xff\nc")] == [
        b"a", b"b \xff", b"c"]


def test_jobs_put_back_unstarted_come_before_new_ones():
    feed = feed_of("1", "2")
    first = feed.take()
    feed.requeue(first)
    assert feed.take() is first and feed.take().command == b"2"


def test_a_failed_job_waits_behind_the_jobs_read_so_far():
    pool = NodePool(["a", "b", "c"], rng=random.Random(0))
    scheduler = Scheduler(pool, feed_of("bad", "1", "2"))
    job, slot = scheduler.next_assignment()
    scheduler.attempt_finished(job, slot, job_exit(3))
    order = []
    for _ in range(3):
        job, slot = scheduler.next_assignment()
        order.append(job.command)
        scheduler.attempt_finished(job, slot, None)
    assert order == [b"1", b"2", b"bad"]


def test_a_failed_job_is_retried_before_jobs_not_yet_read(tmp_path):
    # Behind what was read, not behind what a file still holds: the job
    # is not held back for reading ahead.
    path = tmp_path / "jobs"
    path.write_bytes(b"".join(b"job %d\n" % i for i in range(1, 20001)))
    feed = JobFeed(files=[open_job_file(str(path))])
    scheduler = Scheduler(NodePool(["a", "b"], rng=random.Random(0)), feed)
    job, slot = scheduler.next_assignment()
    scheduler.attempt_finished(job, slot, job_exit(3))
    seen = []
    while True:
        assignment = scheduler.next_assignment()
        seen.append(assignment[0])
        scheduler.attempt_finished(assignment[0], assignment[1], None)
        if assignment[0] is job:
            break
    assert len(seen) < 20000 and seen[-2].seq < 20000


def test_joblog_round_trip_for_resume(tmp_path):
    path = tmp_path / "log"
    path.write_text("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"
                    + joblog_line(1, "a", 1.0, 0.5, 3, 0, 0, "echo\tx")
                    + joblog_line(2, "a", 1.0, 0.5, 0, 255, 0, "y")
                    + joblog_line(3, "a", 1.0, 0.5, 0, 0, 15, "z"))
    assert completed_in_joblog(str(path)) == {(1, "echo\\tx"), ("a", "echo\\tx")}


def test_status_line_is_the_0_1_0_line():
    assert status_text(110, 556, 176, 176) == \
        "110 of 556 jobs complete, 176 of 176 nodes running jobs."


def test_active_nodes_lines_look_like_0_1_0():
    assert active_nodes_text([("e-c07kilf901", "my_experiment 7")]) == \
        "e-c07kilf901: <'Job' 'my_experiment 7'>\n"


def test_tag_prefixes_whole_lines_only():
    assert tag_lines(b"h: ", b"a\nb\n") == b"h: a\nh: b\n"
    assert tag_lines(b"h: ", b"tail") == b"h: tail"
    assert tag_lines(b"h: ", b"") == b""


def test_a_reinstated_host_gets_its_idle_slots_back_held():
    pool = NodePool(["a", "a", "a"], max_uses=2, rng=random.Random(1))
    busy = pool.acquire()
    used_up = pool.acquire()
    pool.release(used_up)
    used_up2 = pool.acquire_on("a")
    assert used_up2 is used_up
    pool.release(used_up2)  # two uses: this slot is spent
    pool.retire("a", "refused")
    assert pool.acquire() is None
    assert pool.reinstate("a") == 1  # the busy slot is not free, the spent one stays spent
    assert pool.acquire() is None  # held until admitted
    pool.admit("a")
    slot = pool.acquire()
    assert slot is not None and slot not in (busy, used_up)
    pool.release(busy)  # the job that ran through the retirement ends: its slot is live again
    assert pool.acquire() is busy


def test_a_host_with_every_slot_used_up_stays_retired():
    pool = NodePool(["a"], max_uses=1, rng=random.Random(1))
    pool.release(pool.acquire())
    pool.retire("a", "refused")
    assert pool.reinstate("a") == 0
    assert pool.hosts["a"].retired and pool.hosts["a"].reason == "refused"

# -- --halt -------------------------------------------------------------------


@pytest.mark.parametrize("text, rule", [
    ("now,fail=1", HaltRule("now", "fail", 1, False)),
    ("soon,fail=3", HaltRule("soon", "fail", 3, False)),
    ("soon,fail=50%", HaltRule("soon", "fail", 50, True)),
    ("now,success=1", HaltRule("now", "success", 1, False)),
    ("now,success=10%", HaltRule("now", "success", 10, True)),
    # GNU parallel's older forms.
    ("1", HaltRule("soon", "fail", 1, False)),
    ("2", HaltRule("now", "fail", 1, False)),
    ("-1", HaltRule("soon", "success", 1, False)),
    ("-2", HaltRule("now", "success", 1, False)),
    ("20%", HaltRule("soon", "fail", 20, True)),
    ("0", None),
    ("never", None),
])
def test_halt_takes_gnu_parallels_forms(text, rule):
    assert parse_halt(text, 1000) == rule
    if rule is not None:
        assert str(rule) == ("%s,%s=%d%s" % (rule.when, rule.what, rule.count,
                                             "%" if rule.percent else ""))


@pytest.mark.parametrize("text, says", [
    ("later,fail=1", "expected WHEN,WHAT=N"),
    ("now", "expected WHEN,WHAT=N"),
    ("now,fail", "expected WHEN,WHAT=N"),
    ("now,fail=x", "expected WHEN,WHAT=N"),
    ("now,done=1", "done=N is not supported"),
    ("now,fail=0", "from 1 to 1000"),
    ("now,fail=1001", "from 1 to 1000"),
    ("now,fail=101%", "from 1 to 100%"),
])
def test_a_halt_it_cannot_honour_is_refused_with_the_reason(text, says):
    with pytest.raises(ValueError, match=says):
        parse_halt(text, 1000)


@pytest.mark.parametrize("count, percent, counted, total, known, met", [
    (2, False, 1, 10, True, False),
    (2, False, 2, 10, True, True),
    (2, False, 2, 10, False, True),  # a count needs no total
    (50, True, 3, 8, True, False),
    (50, True, 4, 8, True, True),  # GNU parallel: counted >= total * 50%
    (34, True, 2, 6, True, False),  # 2.04 jobs: a third is needed
    (34, True, 3, 6, True, True),
    (50, True, 4, 8, False, False),  # a stream's total is still growing
    (50, True, 0, 0, True, False),
])
def test_a_halt_percentage_is_of_a_known_total(count, percent, counted, total, known, met):
    assert HaltRule("soon", "fail", count, percent).met(counted, total, known) is met


def halting_scheduler(rule, commands, hosts=("a",)):
    return Scheduler(NodePool(list(hosts), rng=random.Random(0)), feed_of(*commands),
                     job_failure="job", halt=parse_halt(rule, 1000))


def test_halt_soon_starts_nothing_once_enough_jobs_failed_and_names_the_last():
    scheduler = halting_scheduler("soon,fail=2", ["1", "2", "3", "4"], hosts=("a", "b"))
    (first, a), (second, b) = scheduler.next_assignment(), scheduler.next_assignment()
    scheduler.attempt_finished(first, a, job_exit(3))
    assert scheduler.halting() is None
    third, a = scheduler.next_assignment()
    scheduler.attempt_finished(second, b, job_exit(4))
    assert scheduler.halting() == "soon"
    assert scheduler.next_assignment() is None and scheduler.slots_in_demand() == 1
    halted = scheduler.halted
    assert (halted.job, halted.host, str(halted.failure)) == (second, b.host.name, "job exit 4")
    scheduler.attempt_finished(third, a, None)  # a running job still finishes
    assert scheduler.nothing_more_can_run() and not scheduler.done()
    assert [job.command for job in scheduler.not_completed()] == [b"1", b"2", b"4"]


def test_halt_on_success_counts_completed_jobs_only():
    scheduler = halting_scheduler("now,success=1", ["1", "2", "3"])
    job, slot = scheduler.next_assignment()
    scheduler.attempt_finished(job, slot, job_exit(1))
    assert scheduler.halting() is None
    job, slot = scheduler.next_assignment()
    scheduler.attempt_finished(job, slot, None)
    assert scheduler.halting() == "now" and scheduler.halted.succeeded
    assert scheduler.halted.job is job and scheduler.halted.failure is None


def test_a_requeued_job_is_no_failure_for_halt():
    # A refused connection retires its node (node health) and the job runs
    # elsewhere: it has not failed.
    scheduler = halting_scheduler("now,fail=1", ["1"], hosts=("a", "b"))
    job, slot = scheduler.next_assignment()
    assert scheduler.attempt_finished(job, slot, Failure(Kind.REFUSED, "r")).requeued
    assert scheduler.halting() is None


def test_halt_on_a_percentage_of_a_stream_waits_for_its_end(tmp_path):
    from clstr.loop import EventLoop
    fifo = str(tmp_path / "jobs")
    os.mkfifo(fifo)
    feed = JobFeed(files=[open_job_file(fifo)])
    writer = os.open(fifo, os.O_WRONLY)
    loop = EventLoop()
    try:
        feed.start(loop, lambda: None)
        loop.call_later(30, loop.stop)  # bounds the waits below
        os.write(writer, b"exit 1\nexit 1\n")
        loop.run_while(lambda: feed.waiting_count < 2)
        scheduler = Scheduler(NodePool(["a", "b"]), feed, job_failure="job",
                              halt=parse_halt("now,fail=50%", 1000))
        for job, slot in [scheduler.next_assignment(), scheduler.next_assignment()]:
            scheduler.attempt_finished(job, slot, job_exit(1))
        # Two failed of two read, but more may come: 50% of what is not known.
        assert scheduler.halting() is None
        os.write(writer, b"true\ntrue\n")
        os.close(writer)
        writer = None
        loop.run_while(lambda: not feed.input_done)
        assert scheduler.halting() == "now" and scheduler.halted.job.seq == 2
    finally:
        if writer is not None:
            os.close(writer)
        feed.close()
        loop.close()


def test_a_halted_runs_report_names_the_job_and_says_the_rest_never_started():
    scheduler = halting_scheduler("now,fail=1", ["exit 3", "echo later"])
    job, slot = scheduler.next_assignment()
    scheduler.attempt_finished(job, slot, job_exit(3))
    assert scheduler.halting() == "now"
    lines = run_report(scheduler.pool, scheduler.feed, scheduler.not_completed(), 0, 0,
                       scheduler.halted)
    assert lines == ["the run was halted (--halt now,fail=1) by job 1 'exit 3' on a: job exit 3",
                     "2 jobs not completed:",
                     "  job 1 'exit 3': a: job exit 3",
                     "  job 2 'echo later': never started: the run was halted",
                     "2 of 2 jobs were not completed"]


def test_a_run_halted_on_success_lists_what_it_left_only_with_v():
    scheduler = halting_scheduler("now,success=1", ["true", "echo later"])
    job, slot = scheduler.next_assignment()
    scheduler.attempt_finished(job, slot, None)
    assert scheduler.halting() == "now"
    args = (scheduler.pool, scheduler.feed, scheduler.not_completed())
    said = "the run was halted (--halt now,success=1) by job 1 'true' on a: completed"
    assert run_report(*args, 0, 0, scheduler.halted) == [said]
    assert run_report(*args, 1, 0, scheduler.halted)[1:] == [
        "1 job not completed:", "  job 2 'echo later': never started: the run was halted",
        "1 of 2 jobs were not completed"]

# -- --retries ------------------------------------------------------------------


def retrying_scheduler(commands, hosts, retries, seed=0):
    return Scheduler(NodePool(list(hosts), rng=random.Random(seed)), feed_of(*commands),
                     job_failure="job", retries=retries)


def test_retries_run_a_job_on_its_only_node_until_it_succeeds():
    scheduler = retrying_scheduler(["flaky"], ["a"], retries=3)
    for _ in range(2):
        job, slot = scheduler.next_assignment()
        assert scheduler.attempt_finished(job, slot, job_exit(1)).requeued
    job, slot = scheduler.next_assignment()
    scheduler.attempt_finished(job, slot, None)
    assert scheduler.completed == 1 and scheduler.done()


def test_retries_n_is_n_runs_in_all():
    scheduler = retrying_scheduler(["false"], ["a"], retries=3)
    outcomes = []
    while True:
        assignment = scheduler.next_assignment()
        if assignment is None:
            break
        outcomes.append(scheduler.attempt_finished(*assignment, job_exit(1)))
    assert [o.gave_up for o in outcomes] == [False, False, True]
    assert scheduler.not_completed()[0].command == b"false"


def test_retries_0_has_no_limit():
    scheduler = retrying_scheduler(["false"], ["a"], retries=0)
    for _ in range(50):
        job, slot = scheduler.next_assignment()
        assert scheduler.attempt_finished(job, slot, job_exit(1)).requeued


@pytest.mark.parametrize("seed", range(8))
def test_a_retried_job_goes_to_the_node_where_it_has_not_failed(seed):
    scheduler = retrying_scheduler(["flaky", "other"], ["a", "b"], retries=3, seed=seed)
    (flaky, first), (other, second) = scheduler.next_assignment(), scheduler.next_assignment()
    scheduler.attempt_finished(flaky, first, job_exit(1))
    # Only the slot where it failed is free: it waits for the other.
    assert scheduler.next_assignment() is None
    scheduler.attempt_finished(other, second, None)
    job, slot = scheduler.next_assignment()
    assert job is flaky and slot.host is second.host


def test_a_retried_job_waiting_for_a_better_node_lets_the_next_job_take_the_slot():
    scheduler = retrying_scheduler(["flaky", "long"], ["a", "b"], retries=3)
    (flaky, first), _ = scheduler.next_assignment(), scheduler.next_assignment()
    scheduler.attempt_finished(flaky, first, job_exit(1))
    assert scheduler.next_assignment() is None  # it waits for b, first in the queue
    throttled = Job(3, b"throttled")  # put back behind it (a throttled start, say)
    scheduler.feed.requeue(throttled)
    job, slot = scheduler.next_assignment()
    assert job is throttled and slot.host is first.host
    assert scheduler.feed.waiting() == [flaky]


def test_retries_reuse_a_node_once_the_job_has_failed_on_every_node():
    scheduler = retrying_scheduler(["flaky"], ["a", "b"], retries=3)
    hosts = []
    for _ in range(3):
        job, slot = scheduler.next_assignment()
        hosts.append(slot.host.name)
        scheduler.attempt_finished(job, slot, job_exit(1))
    assert sorted(hosts[:2]) == ["a", "b"] and hosts[2] in ("a", "b")
    assert scheduler.not_completed() == [job]


@pytest.mark.parametrize("failure", [timed_out(5), not_delivered(0, 200000)])
def test_retries_rerun_a_job_stopped_by_timeout_or_not_delivered(failure):
    scheduler = retrying_scheduler(["slow"], ["a"], retries=2)
    job, slot = scheduler.next_assignment()
    assert scheduler.attempt_finished(job, slot, failure).requeued


def test_a_connection_failure_uses_up_no_try():
    # The node is retired (node health) and the job runs elsewhere, as
    # without --retries; only the job's own failures count.
    scheduler = retrying_scheduler(["flaky"], ["a", "b", "c"], retries=2)
    job, slot = scheduler.next_assignment()
    assert scheduler.attempt_finished(job, slot, Failure(Kind.REFUSED, "r")).requeued
    scheduler.pool.retire(slot.host.name, "refused")
    job, slot = scheduler.next_assignment()
    assert scheduler.attempt_finished(job, slot, job_exit(1)).requeued
    job, slot = scheduler.next_assignment()
    assert scheduler.attempt_finished(job, slot, job_exit(1)).gave_up


def test_without_retries_a_jobs_own_failure_is_final_under_job_failure_job():
    scheduler = retrying_scheduler(["false"], ["a"], retries=None)
    job, slot = scheduler.next_assignment()
    assert scheduler.attempt_finished(job, slot, job_exit(1)).gave_up


def test_a_job_that_will_run_again_is_no_failure_for_halt_yet():
    scheduler = Scheduler(NodePool(["a"]), feed_of("flaky"), job_failure="job", retries=2,
                          halt=parse_halt("now,fail=1", 1000))
    job, slot = scheduler.next_assignment()
    assert scheduler.attempt_finished(job, slot, job_exit(1)).requeued
    assert scheduler.halting() is None
    job, slot = scheduler.next_assignment()
    assert scheduler.attempt_finished(job, slot, job_exit(1)).gave_up
    assert scheduler.halting() == "now"
