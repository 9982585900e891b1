"""The shipped artefact: one reproducible zipapp, standard library only,
Python 3.8 syntax and APIs."""

import ast
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from clstr_run import REPO

PACKAGE = os.path.join(REPO, "clstr")


def build(tmp_path, name):
    target = str(tmp_path / name)
    subprocess.run(["bash", os.path.join(REPO, "build_zipapp.sh"), target], check=True,
                   capture_output=True, timeout=60)
    return target


def test_zipapp_builds_reproducibly(tmp_path):
    first, second = build(tmp_path, "a.pyz"), build(tmp_path, "b.pyz")
    digest = [hashlib.sha256(open(path, "rb").read()).hexdigest() for path in (first, second)]
    assert digest[0] == digest[1]


def test_zipapp_holds_only_the_package_and_runs_from_anywhere(tmp_path):
    pyz = build(tmp_path, "clstr.pyz")
    names = zipfile.ZipFile(pyz).namelist()
    assert "__main__.py" in names
    assert all(name == "__main__.py" or name.startswith("clstr/") for name in names)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copied = shutil.copy(pyz, str(elsewhere / "clstr.pyz"))
    result = subprocess.run([copied, "--version"], cwd="/", capture_output=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith(b"clstr ")


def _imports(path):
    tree = ast.parse(open(path, "rb").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names")
def test_package_imports_only_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"clstr"}
    for name in sorted(os.listdir(PACKAGE)):
        if name.endswith(".py"):
            imported = set(_imports(os.path.join(PACKAGE, name)))
            assert imported <= allowed, (name, imported - allowed)


def _vermin(path):
    """Run vermin with a 3.8 target; None if it is not installed."""
    try:
        import vermin  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        return None
    return subprocess.run(
        [sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())",
         "-t=3.8-", "--no-tips", "--violations", "--eval-annotations", path],
        capture_output=True, text=True, timeout=120)


def test_package_needs_nothing_newer_than_python_3_8():
    result = _vermin(PACKAGE)
    if result is None:
        pytest.skip("vermin not installed (pip install vermin)")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_version_check_catches_a_newer_api(tmp_path):
    newer = tmp_path / "newer.py"
    newer.write_text("print('x'.removeprefix('y'))\n")
    result = _vermin(str(newer))
    if result is None:
        pytest.skip("vermin not installed (pip install vermin)")
    assert result.returncode != 0


def test_set_up_puts_the_test_tools_in_a_venv_of_the_systems_own_python(tmp_path):
    # Debian's /usr/bin/python3 refuses `pip install` (externally managed):
    # .ci/deps makes a venv from it (seeing the system's modules) for pip.
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    venv = tmp_path / "venv"
    result = subprocess.run(["bash", os.path.join(REPO, ".ci", "deps")], cwd=REPO,
                            env=dict(os.environ, PYTHON=python, VENV=str(venv)),
                            capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    own = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import sys; print(sys.prefix != sys.base_prefix)"],
                         capture_output=True, timeout=60)
    assert own.stdout == b"True\n", own.stderr
    # make runs the tests and the demo with the venv's python.
    for target in ("test", "demo", "lint"):
        plan = subprocess.run(["make", "-n", target, "VENV=%s" % venv], cwd=REPO,
                              capture_output=True, timeout=60)
        assert ("%s/bin/python " % venv).encode() in plan.stdout, (target, plan.stdout)
