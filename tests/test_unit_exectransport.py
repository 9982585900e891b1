"""The exec transport's pure parts: templates, Slurm's environment and what a
transport's failure before its job started means."""

import os
import subprocess

import pytest

from clstr.failures import Kind, classify_exec
from clstr.transport.endreport import ReportReader
from clstr.transport.exec import (
    ExecTemplateError,
    exec_argv,
    parse_exec_template,
    wrapper_words,
)
from clstr.transport.slurm import (
    SRUN_TEMPLATE,
    SlurmEnvironmentError,
    parse_tasks_per_node,
    slurm_nodes,
)

WRAPPER = ["sh", "-c", 'echo "$1"', "clstr-job", b"echo hi"]


# --- templates ------------------------------------------------------------

def test_template_is_split_like_a_shell_command_line():
    assert parse_exec_template("docker exec -i 'my {host}' \"--x=a b\"") == [
        "docker", "exec", "-i", "my {host}", "--x=a b"]


def test_template_passes_shell_syntax_as_plain_words():
    assert parse_exec_template("env A=$HOME {host} ; * |") == ["env", "A=$HOME", "{host}",
                                                               ";", "*", "|"]


@pytest.mark.parametrize("text", ["", "   ", "docker exec -i node1", "srun --nodelist={hos}"])
def test_template_without_host_is_a_usage_error(text):
    with pytest.raises(ExecTemplateError, match=r"\{host\}"):
        parse_exec_template(text)


def test_template_with_unbalanced_quote_is_a_usage_error():
    with pytest.raises(ExecTemplateError, match="No closing quotation"):
        parse_exec_template("docker exec 'oops {host}")


def test_host_cannot_choose_the_program():
    with pytest.raises(ExecTemplateError, match="program"):
        parse_exec_template("{host}-run x")


def test_template_error_is_one_line():
    with pytest.raises(ExecTemplateError) as caught:
        parse_exec_template("docker exec -i node1")
    assert "\n" not in str(caught.value)


def test_host_replaces_the_field_inside_words_and_the_wrapper_follows():
    words = parse_exec_template("srun --overlap --nodelist={host} --comment=on-{host}-x")
    assert exec_argv(words, "n01", WRAPPER) == [
        "srun", "--overlap", "--nodelist=n01", "--comment=on-n01-x"] + WRAPPER


def test_host_never_adds_a_word():
    words = parse_exec_template("docker exec -i {host}")
    argv = exec_argv(words, "a b", ["sh"])
    assert argv == ["docker", "exec", "-i", "a b", "sh"]


def test_other_braces_are_left_alone():
    words = parse_exec_template("kubectl exec -i {host} -o jsonpath={.items} --")
    assert exec_argv(words, "pod-1", [])[5] == "jsonpath={.items}"


@pytest.mark.parametrize("host", ["", "-oProxyCommand=x"])
def test_a_host_that_could_be_an_option_is_refused(host):
    with pytest.raises(ValueError):
        exec_argv(["docker", "exec", "{host}"], host, [])


def test_local_template_runs_the_wrapper_with_the_node_name():
    # The CI stand-in for a transport: env sets NODE and runs the wrapper.
    words = parse_exec_template("env NODE={host}")
    wrapper = ["sh", "-c", 'echo "$NODE: $1"', "clstr-job", b"job 'one'"]
    result = subprocess.run(exec_argv(words, "node7", wrapper), capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=30)
    assert result.stdout == b"node7: job 'one'\n"


def test_the_wrapper_reports_the_jobs_status_and_itself_exits_0():
    # srun adds "task 0: Exited with exit code N" to a task that exits N,
    # and exits N itself: the end report has already said how the job ended.
    argv = exec_argv(parse_exec_template("env NODE={host}"), "n1",
                     wrapper_words(b'echo "$NODE"; echo err >&2; exit 3'))
    # The wrapper takes the end of its stdin for a stop: held open here.
    stdin_read, stdin_write = os.pipe()
    try:
        result = subprocess.run(argv, stdin=stdin_read, capture_output=True, timeout=60)
    finally:
        os.close(stdin_read)
        os.close(stdin_write)
    reports = ReportReader()
    err = reports.feed(result.stderr) + reports.close()
    assert (result.stdout, err, reports.status) == (b"n1\n", b"err\n", 3)
    assert result.returncode == 0


# --- Slurm ----------------------------------------------------------------

@pytest.mark.parametrize("text, counts", [
    ("1", [1]),
    ("4", [4]),
    ("2(x3),1", [2, 2, 2, 1]),
    ("1,3(x2)", [1, 3, 3]),
    ("16(x2)", [16, 16]),
    ("2(x12)", [2] * 12),
    ("1(x100),4", [1] * 100 + [4]),
])
def test_tasks_per_node_expand(text, counts):
    assert parse_tasks_per_node(text) == counts


@pytest.mark.parametrize("text", ["", "x", "2(3)", "2(x)", "-1", "2(x3"])
def test_unreadable_tasks_per_node_is_an_error(text):
    with pytest.raises(SlurmEnvironmentError, match="SLURM_TASKS_PER_NODE"):
        parse_tasks_per_node(text)


@pytest.mark.parametrize("text", ["100001", "1(x100001)", "50001(x2)", "1,100000"])
def test_tasks_per_node_beyond_the_names_limit_is_an_error(text):
    # The limit is checked before the list is built: "99999999(x4)" once
    # filled gigabytes.
    with pytest.raises(SlurmEnvironmentError, match="more than 100000 slots"):
        parse_tasks_per_node(text)


def _allocation(nodelist, tasks):
    return {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": nodelist, "SLURM_TASKS_PER_NODE": tasks}


def test_slurm_nodes_list_each_node_once_per_task():
    assert slurm_nodes(_allocation("n[01-03],gpu7", "2(x3),1")) == [
        "n01", "n01", "n02", "n02", "n03", "n03", "gpu7"]


def test_slurm_nodes_with_a_two_digit_repeat_count():
    assert slurm_nodes(_allocation("cn[01-12]", "2(x12)")) == [
        "cn%02d" % n for n in range(1, 13) for _ in range(2)]


def test_slurm_nodes_single_node():
    assert slurm_nodes(_allocation("clstrslurm1", "4")) == ["clstrslurm1"] * 4


@pytest.mark.parametrize("environ", [
    {},
    {"SLURM_JOB_NODELIST": "n1", "SLURM_TASKS_PER_NODE": "1"},
    {"SLURM_JOB_ID": "42", "SLURM_TASKS_PER_NODE": "1"},
])
def test_slurm_outside_an_allocation_is_an_error(environ):
    with pytest.raises(SlurmEnvironmentError, match="not inside a Slurm allocation"):
        slurm_nodes(environ)


def test_slurm_counts_must_match_the_nodes():
    with pytest.raises(SlurmEnvironmentError, match="3 counts for the 4 nodes"):
        slurm_nodes(_allocation("n[1-4]", "1(x3)"))


def test_slurm_bad_nodelist_is_an_error():
    with pytest.raises(SlurmEnvironmentError, match="SLURM_JOB_NODELIST"):
        slurm_nodes(_allocation("n[1-", "1"))


def test_srun_template_runs_one_task_on_the_named_node():
    words = parse_exec_template(SRUN_TEMPLATE)
    argv = exec_argv(words, "n01", ["sh"])
    assert argv[0] == "srun"
    assert {"--nodes=1", "--ntasks=1", "--overlap", "--nodelist=n01"} <= set(argv)


# --- classification -------------------------------------------------------

def test_success_is_no_failure():
    assert classify_exec(0, b"") is None


def test_transport_failure_before_start_blames_the_node_in_its_own_words():
    failure = classify_exec(1, b"srun: error: Unable to allocate resources: "
                                      b"Invalid node name specified\n")
    assert failure.kind is Kind.TRANSPORT
    assert failure.kind.transport and not failure.kind.stops_run
    assert failure.detail == ("srun: error: Unable to allocate resources: "
                              "Invalid node name specified")


def test_docker_without_the_container_blames_the_node():
    failure = classify_exec(1, b"Error response from daemon: No such container: web1\n")
    assert failure.kind is Kind.TRANSPORT


def test_silent_transport_failure_says_its_status():
    failure = classify_exec(7, b"")
    assert (failure.kind, failure.detail) == (Kind.TRANSPORT, "exited 7 before the job started")


def test_transport_killed_by_a_signal_is_interrupted():
    assert classify_exec(-15, b"").kind is Kind.INTERRUPTED


@pytest.mark.parametrize("said", [
    b"srun: error: Unable to create step for job 2: Step limit reached for this job",
    b"srun: error: Unable to confirm allocation for job 9: Invalid job id specified",
    b"srun: error: Unable to create step for job 2: Job/step already completing or completed",
    b"srun: error: Unable to allocate resources: Invalid partition name specified",
    b"srun: unrecognized option '--bogus'\nTry \"srun --help\" for more information",
    b"unknown flag: --bogus\nSee 'docker exec --help'.",
])
def test_failure_no_node_can_cure_stops_the_run(said):
    failure = classify_exec(1, said + b"\n")
    assert failure.kind is Kind.FATAL and failure.kind.stops_run
    assert "\n" not in failure.detail
