"""clstr's exit statuses live in clstr/exits.py alone: the README's table
and the entry point (which may import nothing of clstr's before its
version check) agree with it."""

import ast
import os
import re

from clstr import exits
from clstr_run import REPO


def _statuses():
    named = {value for name, value in vars(exits).items()
             if name.startswith("EXIT_") and isinstance(value, int)}
    return named | set(exits.SIGNAL_EXITS.values())


def test_the_readme_lists_every_exit_status_and_no_other():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    table = readme.split("## Exit status", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for row in re.findall(r"^\| ([\d, ]+) \|", table, re.M):
        listed.update(int(number) for number in row.split(","))
    assert listed == _statuses()


def test_the_entry_point_exits_only_with_statuses_of_exits_py():
    source = open(os.path.join(REPO, "clstr", "__main__.py"), encoding="utf-8").read()
    codes = {node.args[0].value for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "exit"
             and isinstance(node.args[0], ast.Constant)}
    assert codes == {exits.EXIT_USAGE, exits.EXIT_INTERRUPTED}
