"""README.md against reality: every block after a marker

    <!-- checked: tests/test_readme_examples.py::TEST -->

is checked by TEST here (the failure-report and joblog examples are run on
the loopback cluster and compared after normalising ports and times; the
list of failure kinds is compared with clstr.failures.Kind; the usage
example runs on two loopback nodes, the files example on three; the status
and active-nodes lines are what clstr.status prints for the numbers
shown), so the docs
cannot drift from what clstr prints.  Every marker names a test of this file
and every such test has its marker."""

import os
import re
import shlex
import shutil
import subprocess

import pytest

from clstr.failures import Kind
from clstr.status import active_nodes_text, progress_fields
from clstr_run import REPO, RUN_ID, clstr, clstr_argv

README = os.path.join(REPO, "README.md")
MARKER = re.compile(r"^<!-- checked: tests/test_readme_examples\.py::(\w+) -->\n", re.M)


def checked_blocks():
    """{test name: the text after its marker}: a fenced block's lines, or a
    table's lines."""
    with open(README) as readme:
        text = readme.read()
    blocks = {}
    for marker in MARKER.finditer(text):
        rest = text[marker.end():]
        if rest.startswith("```"):
            body = rest.split("\n", 1)[1]
            block = body[:body.index("```")]
        else:
            block = rest[:rest.find("\n\n") + 1 if "\n\n" in rest else len(rest)]
        assert marker.group(1) not in blocks, "two markers for %s" % marker.group(1)
        blocks[marker.group(1)] = block.splitlines()
    return blocks


def test_every_marker_names_a_test_here_and_every_test_has_a_marker():
    tests = {name for name in globals() if name.startswith("test_")
             and name != "test_every_marker_names_a_test_here_and_every_test_has_a_marker"}
    assert set(checked_blocks()) == tests


# -- the list of failure kinds -------------------------------------------------

def test_readme_lists_every_failure_kind():
    rows = [line for line in checked_blocks()["test_readme_lists_every_failure_kind"]
            if line.startswith("| `")]
    listed = [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]
    # "job exit N": the kind's name with the job's exit status.
    names = [re.sub(r" N$", "", name) for name in listed]
    assert sorted(names) == sorted(kind.value for kind in Kind)
    assert len(names) == len(set(names))


# -- the failure report and the joblog ---------------------------------------

def _command_and_output(lines):
    """The command of a README session (``$ ...`` with ``\\`` continuation
    lines), its output lines, and the exit status it shows (``$ echo $?``),
    if any."""
    assert lines[0].startswith("$ ")
    command = lines[0][2:]
    index = 1
    while command.endswith("\\"):
        command = command[:-1] + " " + lines[index].strip()
        index += 1
    output, status = [], None
    for number, line in enumerate(lines[index:], index):
        if line == "$ echo $?":
            status = int(lines[number + 1])
            break
        output.append(line)
    return shlex.split(command), output, status


def _normalised(lines):
    return [re.sub(r"port \d+", "port PORT", line) for line in lines]


def _run_readme_command(cluster, words, *extra):
    assert words[0] == "clstr"
    return clstr(cluster, *(words[1:] + list(extra)))


@pytest.fixture(scope="module")
def failure_report_run(cluster, tmp_path_factory):
    """The failure-report example, run once with a joblog (the joblog
    example is "the run above with --joblog joblog.tsv")."""
    words, output, status = _command_and_output(checked_blocks()["test_failure_report_example"])
    joblog = tmp_path_factory.mktemp("readme") / "joblog.tsv"
    result = _run_readme_command(cluster, words, "--joblog", str(joblog))
    return result, output, status, joblog


def test_failure_report_example(failure_report_run):
    result, output, status, _ = failure_report_run
    # On a terminal the report follows the jobs' output, as it ends the run.
    printed = (result.stdout + result.stderr).decode().splitlines()
    assert _normalised(printed) == _normalised(output)
    assert result.returncode == status


def test_gather_example(cluster):
    if not cluster.bash_user:
        pytest.skip("bashnode* log in as a second user (bash), made only as root")
    words, output, status = _command_and_output(checked_blocks()["test_gather_example"])
    result = _run_readme_command(cluster, words)
    # On a terminal clstr's report follows the gathered output, as it ends the run.
    printed = (result.stdout + result.stderr).decode().splitlines()
    assert _normalised(printed) == _normalised(output)
    assert result.returncode == status


def test_joblog_example(failure_report_run):
    _, _, _, joblog = failure_report_run
    lines = checked_blocks()["test_joblog_example"]
    assert lines[0] == "$ column -t -s $'\\t' joblog.tsv"
    shown = [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]
    logged = [line.split("\t") for line in joblog.read_text().splitlines()]
    assert shown[0] == logged[0]  # the header: GNU parallel's nine columns
    assert len(shown) == len(logged)
    for shown_row, logged_row in zip(shown[1:], logged[1:]):
        assert len(shown_row) == len(logged_row) == 9
        # Starttime and JobRuntime: seconds with three decimals, as shown.
        for column in (2, 3):
            assert re.fullmatch(r"\d+\.\d{3}", shown_row[column]), shown_row
            assert re.fullmatch(r"\d+\.\d{3}", logged_row[column]), logged_row
        same = [0, 1, 4, 5, 6, 7, 8]
        assert [shown_row[c] for c in same] == [logged_row[c] for c in same]


# -- --halt and --retries ---------------------------------------------------------

def test_halt_example(cluster):
    words, output, status = _command_and_output(checked_blocks()["test_halt_example"])
    result = _run_readme_command(cluster, words)
    # One slot: the jobs run in order, and the report follows their output.
    assert (result.stdout + result.stderr).decode().splitlines() == output
    assert result.returncode == status


def test_retries_example(cluster, tmp_path):
    lines = checked_blocks()["test_retries_example"]
    shown = next(n for n, line in enumerate(lines) if line.startswith("$ awk "))
    words, output, status = _command_and_output(lines[:shown])
    assert lines[shown] == "$ awk -F'\\t' '{ print $1, $2, $7 }' joblog.tsv"
    # The job's count of its tries lives in the login user's home, shared by
    # other runs of the suite: this run's file has a name of its own.
    joblog = str(tmp_path / "joblog.tsv")
    words = [joblog if word == "joblog.tsv" else
             word.replace("tries", "tries-" + RUN_ID) if previous == "-j" else word
             for previous, word in zip([None] + words, words)]
    result = _run_readme_command(cluster, words)
    assert result.stdout.decode().splitlines() == output, result.stderr
    assert result.returncode == 0 and status is None, result.stderr
    with open(joblog) as log:
        logged = [" ".join(line.split("\t")[i] for i in (0, 1, 6)) for line in log]
    assert logged == lines[shown + 1:]


# -- the usage examples ---------------------------------------------------------

def test_three_jobs_on_two_nodes_example(cluster):
    words, output, status = _command_and_output(
        checked_blocks()["test_three_jobs_on_two_nodes_example"])
    assert status is None
    # The README's nodes are a real cluster's; the same jobs run on two
    # loopback nodes instead.
    hosts = iter(cluster.nodes(2))
    words = [next(hosts) if previous == "--node" else word
             for previous, word in zip([None] + words, words)]
    assert "node001" in words and "node002" in words
    result = _run_readme_command(cluster, words)
    assert result.returncode == 0, result.stderr
    # "Lines come in no particular order".
    printed = result.stdout.decode().splitlines()
    assert sorted(printed) == sorted(output)


def test_argument_templates_example(cluster):
    words, output, status = _command_and_output(
        checked_blocks()["test_argument_templates_example"])
    assert status is None
    # lab01 and lab02 are a real cluster's; two loopback nodes stand in.
    stand_in = dict(zip(["lab01", "lab02"], cluster.nodes(2)))
    result = _run_readme_command(cluster, [stand_in.get(word, word) for word in words])
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.decode().splitlines()) == sorted(output)


def test_keep_order_example(cluster):
    words, output, status = _command_and_output(checked_blocks()["test_keep_order_example"])
    assert status is None and words[:3] == ["clstr", "-n", "3/lab01"]
    # The same jobs on a loopback node: the order is the jobs', whatever
    # order they end in.
    result = _run_readme_command(cluster, ["clstr", "-n", "3/node001"] + words[3:])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == output


def test_slots_example(cluster, tmp_path):
    from clstr.nodeset import expand, parse_node_lines
    lines = checked_blocks()["test_slots_example"]
    words = shlex.split(lines[0][2:], comments=True)
    assert words[:2] == ["clstr", "-n"] and "# 160 slots" in lines[0]
    assert len(expand(words[2])) == 160
    assert lines[1] == "$ cat nodes.txt"
    shown = lines[2:5]
    assert parse_node_lines(shown, "nodes.txt") == (
        ["bignode"] * 8 + ["small1", "small1", "small2", "small2"] + ["me@spare"] * 3)
    # The same file with loopback names (the user is the cluster's), run.
    loopback = {"bignode": "node001", "small[1-2]": "node[002-003]",
                "me@spare": cluster.user + "@node004"}
    nodes = tmp_path / "nodes.txt"
    nodes.write_text("".join(re.sub(r"(\S+/)(\S+)", lambda m: m.group(1) + loopback[m.group(2)],
                                    line) + "\n" for line in shown))
    words = shlex.split(lines[5][2:], comments=True)
    assert words[:3] == ["clstr", "-N", "nodes.txt"] and words[-3:] == ["|", "wc", "-l"]
    result = _run_readme_command(cluster, ["clstr", "-N", str(nodes)] + words[3:-3])
    assert result.returncode == 0, result.stderr
    assert [str(len(result.stdout.splitlines()))] == lines[6:]
    assert result.stdout.splitlines() == [os.uname().nodename.encode()] * 4


def test_status_and_active_nodes_example():
    lines = checked_blocks()["test_status_and_active_nodes_example"]
    assert lines[0].startswith("$ clstr --status ")
    completed, total, busy, slots, retired = 110, 556, 176, 176, 2
    rate_per_minute = 52.4
    elapsed = completed / rate_per_minute * 60
    fields = progress_fields(completed, total, busy, slots, True, elapsed, retired)
    assert "  ".join(fields) == lines[1]
    assert lines[2].startswith("$ clstr --active-nodes /tmp/running_jobs ")
    # The file lists running jobs: the example reads it during the run.
    assert lines[2].endswith(" &")
    assert lines[3].startswith("$ head -2 /tmp/running_jobs ")
    entries = [("e-c07kilf3102", "my_very_exciting_experiment 1"),
               ("e-c07kig2314", "my_very_exciting_experiment 2")]
    assert active_nodes_text(entries).splitlines() == lines[4:]



def test_the_front_ends_section_names_every_option_clstr_passes():
    from clstr.transport.sshcommand import SshSettings
    settings = SshSettings()
    argvs = [settings.argv("h", b"c", "/s", "/log"), settings.argv("h", b"c"),
             settings.master_argv("h", "/s", 60)]
    blocks = checked_blocks()
    section = "\n".join(blocks["test_the_front_ends_section_names_every_option_clstr_passes"])
    for argv in argvs:
        words = [word for word in argv if isinstance(word, str)]
        for before, word in zip(words, words[1:]):
            if before == "-o":
                name = word.split("=")[0]
                shown = word if name in ("LogLevel", "ControlMaster") else name
                assert "`%s" % shown in section, shown
            elif word.startswith("-") and word != "--":
                assert "`%s" % word in section, word


def test_version_is_not_listed_as_a_transport():
    transports = checked_blocks()["test_version_is_not_listed_as_a_transport"]
    assert any("--exec" in line for line in transports), transports
    assert not any("--version" in line for line in transports), transports


# -- the job's environment and directory ------------------------------------------

def test_job_environment_example(cluster):
    lines = checked_blocks()["test_job_environment_example"]
    name, value = shlex.split(lines[0][2:])[1].split("=", 1)
    words, output, status = _command_and_output(lines[1:])
    assert status is None
    # The README's node and home are a real cluster's; the directory is
    # one of this run's own under the login user's home.
    home = os.path.expanduser("~" + cluster.user)
    mine = "clstr-readme-" + RUN_ID
    words = [word.replace("lab01", "node001").replace("~/results", "~/" + mine)
             for word in words]
    try:
        result = clstr(cluster, *words[1:], env=dict(os.environ, **{name: value}))
        assert result.returncode == 0, result.stderr
        expected = [line.replace("lab01", "node001").replace("/home/alice/results",
                                                             os.path.join(home, mine))
                    for line in output]
        assert result.stdout.decode().splitlines() == expected
    finally:
        shutil.rmtree(os.path.join(home, mine), ignore_errors=True)


# -- files to and from the nodes ------------------------------------------------

def test_files_example(cluster, tmp_path):
    lines = checked_blocks()["test_files_example"]
    sessions = [index for index, line in enumerate(lines) if line.startswith("$ ")]
    (tmp_path / "model.bin").write_bytes(b"weights\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    for start, end in zip(sessions, sessions[1:] + [len(lines)]):
        words = shlex.split(lines[start][2:])
        if words[0] == "clstr":
            argv = clstr_argv(cluster, *words[1:])
        else:  # the shell's own: its glob
            argv = ["sh", "-c", lines[start][2:]]
        result = subprocess.run(argv, cwd=str(tmp_path), env=env, capture_output=True,
                                stdin=subprocess.DEVNULL, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().splitlines() == lines[start + 1:end], words
    # The nodes share the test user's home: leave nothing of it there.
    home = os.path.expanduser("~" + cluster.user)
    for name in ("model.bin", "where.txt"):
        os.unlink(os.path.join(home, name))
