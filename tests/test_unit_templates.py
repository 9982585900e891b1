"""Argument templates (templates.py, inputs.py): input groups split from
argv, GNU parallel's replacement strings and quoting, the product of the
inputs, and the usage errors.  GNU parallel's own outputs for the same
examples are compared over sshd in test_sshd_templates.py; the expected
values here are what parallel 20221122 printed."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from clstr.cli import UsageError, make_plan
from clstr.inputs import BATCH, open_inputs
from clstr.jobs import Job, JobFeed, numbered_input_lines
from clstr.nodes import NodePool
from clstr.records import job_key
from clstr.templates import FILES, VALUES, Template, TemplateError, dirname, quote, split_inputs
from clstr_run import REPO, all_jobs

FAKESSH = os.path.join(REPO, "tests", "fakessh")

# Values no shell may change: spaces, quotes, $, backquotes, globs, a
# newline, a tab, a leading dash, bytes that are not UTF-8, an empty one.
HOSTILE = [b"a b", b"it's", b'say "hi"', b"$HOME", b"`id`", b"*", b"two\nlines", b"tab\there",
           b"-n", b"caf\xe9", b"\xff\xfe", b"", b"back\\slash", b"{}", b"'", b"''", b"!x"]


# -- argv ---------------------------------------------------------------------

def test_argv_is_cut_at_the_first_input_word_and_each_four_colon_file_is_a_group():
    options, groups = split_inputs(["-n", "a", "b", "-j", "x", ":::", "1", "2", "::::", "f",
                                    "g", ":::", "3"])
    assert options == ["-n", "a", "b", "-j", "x"]
    assert groups == [(VALUES, ["1", "2"]), (FILES, "f"), (FILES, "g"), (VALUES, ["3"])]


def test_argv_without_inputs_is_left_as_it_is():
    argv = ["-n", "a", "-j", "find . -exec rm {} +"]
    assert split_inputs(argv) == (argv, [])


@pytest.mark.parametrize("argv, message", [
    ([":::"], "::: with no values after it"),
    ([":::", "a", ":::"], "::: with no values after it"),
    (["::::"], ":::: with no file after it"),
    (["::::", ":::", "a"], ":::: with no file after it"),
    ([":::", "a", ":::+", "b"], ":::+ (linked inputs) is not supported"),
])
def test_input_mistakes_are_named(argv, message):
    with pytest.raises(TemplateError, match=re.escape(message)):
        split_inputs(argv)


# -- quoting --------------------------------------------------------------------

@pytest.mark.parametrize("value, quoted", [
    (b"ok", b"ok"), (b"a/b-c_d.e+f", b"a/b-c_d.e+f"), (b"a b", b"'a b'"),
    (b"c'd", b"'c'\"'\"'d'"), (b"'", b"\"'\""), (b"e$f", b"'e$f'"), (b"", b"''"),
    (b"g\\h", b"'g\\h'"),
])
def test_values_are_quoted_as_gnu_parallel_quotes_them_for_sh(value, quoted):
    assert quote(value) == quoted


@pytest.mark.parametrize("value", HOSTILE)
def test_every_value_arrives_intact_through_sh(value):
    printed = subprocess.run([b"sh", b"-c", b"printf %s " + quote(value)],
                             capture_output=True, check=True).stdout
    assert printed == value


# What the README says of csh and fish login shells, which read single
# quotes otherwise: the values each cannot take.
NOT_FOR = {"tcsh": (b"two\nlines", b"!x"), "fish": (b"two\\\\slashes", b"q\\'x", b"end\\")}


@pytest.mark.parametrize("shell", sorted(NOT_FOR))
def test_csh_and_fish_take_every_value_but_those_the_readme_names(shell):
    if shutil.which(shell) is None:
        pytest.skip("%s not installed (apt-get install %s)" % (shell, shell))
    values = HOSTILE + list(NOT_FOR[shell])
    for value in values:
        printed = subprocess.run([shell.encode(), b"-c", b"printf %s " + quote(value)],
                                 capture_output=True).stdout
        assert (printed == value) == (value not in NOT_FOR[shell]), (value, printed)


# -- replacement strings -----------------------------------------------------------

# What `parallel -k echo "{}:{.}:{/}:{//}:{/.}" ::: VALUE` printed.
PARALLEL_PATHS = [
    ("a/b.c.d", "a/b.c.d:a/b.c:b.c.d:a:b.c"), ("a.b/c", "a.b/c:a.b/c:c:a.b:c"),
    (".bashrc", ".bashrc::.bashrc:.:"), ("/a", "/a:/a:a:/:a"), ("a/", "a/:a/::.:"),
    ("a.", "a.:a:a.:.:a"), ("/x/y.tar.gz", "/x/y.tar.gz:/x/y.tar:y.tar.gz:/x:y.tar"),
    ("b", "b:b:b:.:b"), ("./c.d", "./c.d:./c:c.d:.:c"), ("a//b", "a//b:a//b:b:a:b"),
    ("/", "/:/::/:"), ("a/.b", "a/.b:a/:.b:a:"), (".", ".::.:.:"), ("..", "..:.:..:.:."),
    ("x/..", "x/..:x/.:..:x:."), ("a/b/", "a/b/:a/b/::a:"),
]


@pytest.mark.parametrize("value, printed", PARALLEL_PATHS)
def test_path_strings_match_gnu_parallel(value, printed):
    command, late = Template(b"echo {}:{.}:{/}:{//}:{/.}", 1).expand(1, (value.encode(),))
    assert late is None
    output = subprocess.run([b"sh", b"-c", command], capture_output=True, check=True).stdout
    assert output.decode() == printed + "\n"


def test_dirname_of_nothing_is_dot_as_in_perl():
    assert dirname(b"") == b"."


def test_numbered_strings_pick_their_group_and_plain_ones_take_all_values():
    template = Template(b"cp {1} {2//}/{2/.}.bak {#} -- {} {.}", 2)
    command, late = template.expand(7, (b"a b.txt", b"dir/x.tar.gz"))
    assert command == b"cp 'a b.txt' dir/x.tar.bak 7 -- 'a b.txt' dir/x.tar.gz 'a b' dir/x.tar"
    assert late is None


def test_a_template_without_replacement_strings_gets_the_values_appended():
    assert Template(b"gzip -9", 2).expand(1, (b"a b", b"c"))[0] == b"gzip -9 'a b' c"


def test_the_job_number_alone_is_a_replacement_string_so_nothing_is_appended():
    assert Template(b"echo {#}", 1).expand(3, (b"a",))[0] == b"echo 3"


def test_braces_that_are_no_replacement_string_stay():
    command, _ = Template(b"echo {0} {x} ${#}x {}", 1).expand(5, (b"v",))
    assert command == b"echo {0} {x} $5x v"


def test_more_numbered_strings_than_groups_is_an_error():
    with pytest.raises(TemplateError, match=r"\{3\}, but there are only 2 input groups"):
        Template(b"echo {3}", 2)


def test_slot_and_host_are_kept_as_written_and_filled_in_per_attempt():
    command, late = Template(b"run {} --gpu {%} --on {host}", 1).expand(1, (b"{%}",))
    # A value that looks like a replacement string is a value.
    assert command == b"run '{%}' --gpu {%} --on {host}"
    slots = NodePool(["h1", "u@h2", "u@h2"]).hosts["u@h2"].slots
    job = Job(1, command, late=late)
    # The slot's number on its host, from 1 ($CLSTR_SLOT's).
    assert job.command_on(slots[1]) == b"run '{%}' --gpu 2 --on 'u@h2'"
    assert job.command == command


# -- inputs ---------------------------------------------------------------------

def test_input_lines_keep_empty_lines_and_cr_and_drop_the_last_newline():
    assert numbered_input_lines(b"a\n\nb\r\n", 1, True) == [(1, b"a"), (2, b""), (3, b"b\r")]
    assert numbered_input_lines(b"a\n\nb", 1, True) == [(1, b"a"), (2, b""), (3, b"b")]
    assert numbered_input_lines(b"", 4, True) == []
    assert numbered_input_lines(b"", 4, False) == [(4, b"")]


def test_inputs_combine_as_gnu_parallel_does_with_the_last_varying_fastest(tmp_path):
    (tmp_path / "f").write_bytes(b"x\n\ny\n")
    source, _ = open_inputs([(VALUES, ["1", "2"]), (FILES, str(tmp_path / "f"))])
    feed = JobFeed((), [source], template=Template(b"echo {#} {1} {2}", 2))
    assert source.expected == 6
    assert [job.command for job in all_jobs(feed)] == [
        b"echo 1 1 x", b"echo 2 1 ''", b"echo 3 1 y", b"echo 4 2 x", b"echo 5 2 ''",
        b"echo 6 2 y"]


def test_a_big_product_is_made_a_batch_at_a_time(tmp_path):
    values = [str(n) for n in range(BATCH + 5)]
    source, _ = open_inputs([(VALUES, ["a", "b"]), (VALUES, values)])
    first = source.read_block()
    assert len(first) == BATCH and not source.at_eof
    rest = []
    while not source.at_eof:
        rest += source.read_block()
    assert len(first) + len(rest) == 2 * len(values)
    assert rest[-1] == (2, (b"b", values[-1].encode()))


def test_a_streaming_first_input_gives_jobs_before_it_ends():
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    try:
        os.dup2(read_end, 0)
        os.set_blocking(0, False)
        source, _ = open_inputs([(FILES, "-"), (VALUES, ["x", "y"])])
        assert source.streaming
        os.write(write_end, b"first\nsec")
        assert source.read_block() == [(1, (b"first", b"x")), (1, (b"first", b"y"))]
        with pytest.raises(BlockingIOError):
            source.read_block()
        os.write(write_end, b"ond\n")
        os.close(write_end)
        assert source.read_block() == [(2, (b"second", b"x")), (2, (b"second", b"y"))]
        assert source.read_block() == [] and source.at_eof
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read_end)


def test_resume_knows_a_job_by_its_number_and_command_with_slot_strings_as_written(tmp_path):
    source, _ = open_inputs([(VALUES, ["a"])])
    [job] = all_jobs(JobFeed((), [source], template=Template(b"echo {} {%}", 1)))
    assert job_key(job) == (1, "echo a {%}")


# -- the command line ---------------------------------------------------------------

def test_job_lines_and_jobs_without_inputs_stay_literal(tmp_path):
    (tmp_path / "jobs").write_text("echo ${#} {} {.}\n")
    for argv in (["-n", "a", "-j", "find . -exec rm {} +"], ["-n", "a", "-J",
                                                              str(tmp_path / "jobs")]):
        _, feed = make_plan(argv)
        [job] = all_jobs(feed)
        assert job.late is None and b"{}" in job.command and not feed.templated


def test_arg_files_come_before_the_other_inputs(tmp_path):
    (tmp_path / "f").write_text("a\nb\n")
    _, feed = make_plan(["-n", "h", "-j", "echo {1}{2}", "-a", str(tmp_path / "f"), ":::",
                         "X", "Y"])
    assert [job.command for job in all_jobs(feed)] == [b"echo aX", b"echo aY", b"echo bX",
                                                    b"echo bY"]


def run(*args, stdin=subprocess.DEVNULL):
    return subprocess.run([sys.executable, "-m", "clstr", "--ssh-command", FAKESSH] + list(args),
                          cwd=REPO, capture_output=True, timeout=60, stdin=stdin)


@pytest.mark.parametrize("args, mentions", [
    (["-j", "JOB {}", ":::"], "::: with no values"),
    (["-j", "JOB {}", "::::", "/no/such/input"], "cannot read input file /no/such/input"),
    (["-j", "JOB {}", "-a", "/no/such/input", ":::", "a"], "/no/such/input"),
    (["-J", "/dev/null", ":::", "a"], "cannot be combined with --job-file"),
    (["-E", "JOB", ":::", "a"], "cannot be combined with --on-each-node"),
    (["-j", "JOB {3}", ":::", "a", ":::", "b"], "{3}, but there are only 2 input groups"),
    ([":::", "a"], "need exactly one --job template"),
    (["-j", "JOB {}", "-j", "JOB", ":::", "a"], "need exactly one --job template"),
    (["-j", "JOB {}", "-a", "-", "::::", "-"], "stdin (-) is given as more than one"),
    (["-j", "JOB {}", ":::", "a", ":::+", "b"], ":::+ (linked inputs) is not supported"),
    (["-j", "JOB {}", ":::", "a", "::::", "NULFILE"], "NULFILE:2: input contains a NUL byte"),
    (["-j", "JOB {}", "--joblog", "NULFILE", "-a", "NULFILE"], "is the input file NULFILE"),
])
def test_template_usage_errors_are_one_line_exit_2_and_start_nothing(args, mentions, tmp_path):
    marker = tmp_path / "ran"
    nul = tmp_path / "NUL"
    nul.write_bytes(b"fine\nnot\0fine\n")
    args = [arg.replace("JOB", "touch %s" % marker) for arg in args]
    args = [str(nul) if arg == "NULFILE" else arg for arg in args]
    if "--joblog" in args:
        nul.write_bytes(b"a\n")
    result = run("-n", "a", *args)
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clstr: error: "), lines
    assert mentions.replace("NULFILE", str(nul)) in lines[0]
    assert not marker.exists()


def test_hostile_values_reach_the_job_intact(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.write_bytes(b"\n".join(value for value in HOSTILE if b"\n" not in value) + b"\n")
    result = run("-n", "a", "--group", "-j", "printf '[%s]' {}; echo", "::::", str(inputs))
    assert result.returncode == 0, result.stderr
    printed = sorted(result.stdout.splitlines())
    assert printed == sorted(b"[%s]" % value for value in HOSTILE if b"\n" not in value)


def test_make_plan_raises_usage_error_for_a_bad_template():
    with pytest.raises(UsageError):
        make_plan(["-n", "a", "-j", "{2}", ":::", "x"])
