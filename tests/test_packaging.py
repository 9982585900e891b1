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


def build(tmp_path, name, tree=REPO):
    target = str(tmp_path / name)
    subprocess.run(["bash", os.path.join(str(tree), "build_zipapp.sh"), target], check=True,
                   capture_output=True, timeout=60)
    return target


def modules(package):
    """Every module under ``package`` (a directory), at any depth, as the
    zipapp names them ("clstr/x.py", "clstr/sub/y.py")."""
    found = set()
    parent = os.path.dirname(package)
    for directory, subdirectories, files in os.walk(package):
        subdirectories[:] = [name for name in subdirectories if name != "__pycache__"]
        found.update(os.path.relpath(os.path.join(directory, name), parent).replace(os.sep, "/")
                     for name in files if name.endswith(".py"))
    return found


@pytest.fixture
def tree(tmp_path):
    """A copy of what packaging reads, with a subpackage (and one inside it)
    that the repository does not have (yet): a build or an install that
    lists modules by hand, or one directory only, would leave them out."""
    copy = tmp_path / "tree"
    shutil.copytree(PACKAGE, str(copy / "clstr"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("build_zipapp.sh", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), str(copy / name))
    inner = copy / "clstr" / "zzprobe" / "inner"
    inner.mkdir(parents=True)
    for package in (inner.parent, inner):
        (package / "__init__.py").write_bytes(b"")
    (inner / "probe.py").write_text("ANSWER = 42\n")
    return copy


def _sha256(path):
    with open(path, "rb") as built:
        return hashlib.sha256(built.read()).hexdigest()


def test_zipapp_builds_reproducibly(tmp_path):
    first, second = build(tmp_path, "a.pyz"), build(tmp_path, "b.pyz")
    assert _sha256(first) == _sha256(second)


def test_zipapp_bytes_depend_on_the_files_contents_only(tmp_path, tree):
    first = build(tmp_path, "a.pyz", tree)
    # Other times and modes, as another checkout of the same tree has.
    for directory, _, files in os.walk(str(tree / "clstr")):
        for name in files:
            os.utime(os.path.join(directory, name), (1234567890, 1234567890))
            os.chmod(os.path.join(directory, name), 0o600)
    second = build(tmp_path, "b.pyz", tree)
    assert _sha256(first) == _sha256(second)
    names = zipfile.ZipFile(second).namelist()
    assert names[0] == "__main__.py" and names[1:] == sorted(names[1:])


def test_zipapp_holds_every_module_at_any_depth(tmp_path, tree):
    pyz = build(tmp_path, "clstr.pyz", tree)
    sources = modules(str(tree / "clstr"))
    bytecode = {name + "c" for name in sources}
    assert set(zipfile.ZipFile(pyz).namelist()) == {"__main__.py"} | sources | bytecode
    probe = subprocess.run([sys.executable, "-c", "import clstr.zzprobe.inner.probe as p; "
                            "print(p.ANSWER)"], env=dict(os.environ, PYTHONPATH=pyz),
                           cwd="/", capture_output=True, timeout=60)
    assert probe.stdout == b"42\n", probe.stderr


def _builds_wheels():
    """Whether this Python's setuptools can build a wheel: pip needs that to
    install from a tree (setuptools 70.1 and later can by itself, older ones
    with the wheel package, which `make test` installs)."""
    for module in ("setuptools.command.bdist_wheel", "wheel.bdist_wheel"):
        try:
            __import__(module)
            return True
        except ImportError:
            pass
    return False


def test_pip_install_holds_every_module_at_any_depth(tmp_path, tree):
    if not _builds_wheels():
        pytest.skip("setuptools cannot build wheels here: pip install wheel (make test does)")
    # A throwaway venv; the test's own pip and setuptools install into it,
    # offline (no build isolation, no index: the tests talk to no network).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True, timeout=120)
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-index",
         "--no-deps", "--no-cache-dir", "--prefix", str(venv), str(tree)],
        cwd=str(tree), capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import clstr.zzprobe.inner.probe, clstr.cli, os; "
                            "print(os.path.dirname(clstr.__file__))"],
                           cwd="/", capture_output=True, timeout=60)
    assert where.returncode == 0, where.stderr
    package = where.stdout.decode().strip()
    assert package.startswith(str(venv))
    assert modules(package) == modules(str(tree / "clstr"))


def test_subpackages_stay_empty_so_that_start_up_stays_fast():
    # A subpackage's __init__.py runs on every import of any of its modules.
    for directory, _, files in os.walk(PACKAGE):
        if directory != PACKAGE and "__init__.py" in files:
            init = os.path.join(directory, "__init__.py")
            body = ast.parse(open(init, "rb").read(), init).body
            assert all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                       and isinstance(node.value.value, str) for node in body), init


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


def _module_file(pyz, python=sys.executable):
    """Where ``python`` took clstr.cli from, importing it from ``pyz``."""
    result = subprocess.run([python, "-c", "import clstr.cli; print(clstr.cli.__file__)"],
                            env=dict(os.environ, PYTHONPATH=pyz), cwd="/", capture_output=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


def test_the_building_python_imports_the_bytecode_and_others_the_source(tmp_path):
    pyz = build(tmp_path, "clstr.pyz")
    assert _module_file(pyz).endswith("/clstr/cli.pyc")
    # Another Python's magic number: it compiles the source instead.
    other = str(tmp_path / "other.pyz")
    with zipfile.ZipFile(pyz) as built, zipfile.ZipFile(other, "w") as copy:
        for info in built.infolist():
            data = built.read(info)
            if info.filename.endswith(".pyc"):
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            copy.writestr(info, data)
    assert _module_file(other).endswith("/clstr/cli.py")
    result = subprocess.run([sys.executable, other, "--version"], capture_output=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.startswith(b"clstr "), result.stderr


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
    for name in sorted(modules(PACKAGE)):
        imported = set(_imports(os.path.join(REPO, name)))
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
