"""Apply each deliberate bug in this directory to a scratch copy of the tree
and run the tests it names: every bug must make them fail (`make mutants`).

A patch starts with two comment lines, then a `git diff`:

    # Breaks: what the bug breaks
    # Tests: the pytest arguments that must fail with it (a file, -k ...)

A patch that no longer applies fails the target: refresh it (make the same
small change again on the current code, `git diff > NAME.patch`, put the two
lines back on top).  Usage: python3 tests/mutants/run.py [NAME ...]
"""

import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SKIPPED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "*.pyz", "build",
                                 "dist", "*.egg-info")


def header(path, field):
    with open(path) as patch:
        for line in patch:
            if line.startswith("# %s:" % field):
                return line.split(":", 1)[1].strip()
    raise SystemExit("%s: no '# %s:' line" % (path, field))


def try_mutant(path):
    """'caught', 'SURVIVED' or 'DOES NOT APPLY', and pytest's last line."""
    scratch = tempfile.mkdtemp(prefix="clstr-mutant-")
    try:
        tree = os.path.join(scratch, "tree")
        shutil.copytree(REPO, tree, ignore=SKIPPED)
        # No fuzz: a patch whose context has changed could put its bug in
        # another place (or none), and a test failing there proves nothing.
        with open(path, "rb") as patch:
            applied = subprocess.run(["patch", "-p1", "--batch", "--forward", "--silent",
                                      "--fuzz=0"],
                                     cwd=tree, stdin=patch, capture_output=True)
        if applied.returncode != 0:
            return "DOES NOT APPLY", (applied.stdout + applied.stderr).decode().strip()
        tests = shlex.split(header(path, "Tests"))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"] + tests,
            cwd=tree, stdin=subprocess.DEVNULL, capture_output=True, timeout=900)
        said = result.stdout.decode(errors="replace").strip().splitlines()
        # The first assertion error says why, pytest's last line what ran.
        why = [line for line in said if line.startswith("E ")][:1]
        last = " / ".join(why + said[-1:])[:300]
        # 1: tests failed.  Anything else (0 passed, 2 interrupted, 4 usage
        # error, 5 nothing collected) does not show the bug caught.
        return ("caught" if result.returncode == 1 else "SURVIVED"), last
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(names):
    patches = sorted(glob.glob(os.path.join(HERE, "*.patch")))
    if names:
        patches = [p for p in patches if os.path.basename(p)[:-len(".patch")] in names]
    if not patches:
        print("no mutants found")
        return 1
    bad = 0
    for path in patches:
        verdict, last = try_mutant(path)
        bad += verdict != "caught"
        print("%-16s %s  (%s)\n%16s %s" % (verdict, os.path.basename(path),
                                          header(path, "Breaks"), "", last))
        sys.stdout.flush()
    print("%d of %d mutants caught" % (len(patches) - bad, len(patches)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
