"""clstr 0.1.0's command line keeps working (issue 13): every abbreviation
that selected a long option there selects the same option here."""

import pytest

from clstr.cli import OLD_LONG_OPTIONS, build_parser, expand_old_abbreviations

# 0.1.0's long options and the destination each sets.
OLD_DESTS = {"--node": "node", "--node-file": "node_file", "--max-nodes": "max_nodes",
             "--max-node-uses": "max_node_uses", "--job": "job", "--job-file": "job_file",
             "--on-each-node": "on_each_node", "--stdout": "stdout", "--stderr": "stderr",
             "--verbose": "verbose", "--status": "status", "--active-nodes": "active_nodes"}


def unique_old_prefixes():
    """(prefix, option) for every prefix that named one 0.1.0 option only."""
    for option in OLD_DESTS:
        for end in range(3, len(option) + 1):
            prefix = option[:end]
            if [o for o in OLD_LONG_OPTIONS if o.startswith(prefix)] == [option]:
                yield prefix, option


def test_the_walk_covers_the_abbreviations_users_typed():
    prefixes = dict(unique_old_prefixes())
    assert prefixes["--job-f"] == "--job-file"
    assert prefixes["--o"] == "--on-each-node"
    assert prefixes["--a"] == "--active-nodes"


@pytest.mark.parametrize("prefix, option", sorted(unique_old_prefixes()))
def test_every_0_1_0_abbreviation_selects_the_same_option(prefix, option):
    parser = build_parser()
    value = {"--verbose": None, "--status": None, "--max-nodes": "3",
             "--max-node-uses": "3"}.get(option, "x")
    argv = [prefix] + ([value] if value else [])
    args = parser.parse_args(argv)
    dest = OLD_DESTS[option]
    assert getattr(args, dest) not in (None, [], 0, False), (prefix, option)


def test_exact_new_options_and_values_after_double_dash_are_left_alone():
    known = build_parser()._option_string_actions
    assert expand_old_abbreviations(["--job-failure", "job"], known) == ["--job-failure", "job"]
    assert expand_old_abbreviations(["--job-f=x", "--", "--job-f"], known) == [
        "--job-file=x", "--", "--job-f"]
