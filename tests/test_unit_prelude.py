"""The job's prelude (transport/prelude.py) run locally by dash and bash:
what it exports and where it enters, byte for byte; and what the command
line makes of --env and --workdir.  The prelude under every transport and
the real sshd is in test_sshd_jobenv.py; under csh and fish login shells in
test_unit_wrapper.py."""

import os
import shutil
import subprocess
import sys

import pytest

from clstr.transport.prelude import PRELUDE_MAX, WORKDIR_FAILED, job_prelude
from clstr_run import REPO

SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)]
# Every byte a value can hold that some shell's quoting treats specially.
HOSTILE = b"sp ace 'q' \"dq\" $HOME `id` \\ \\\\ \\' !x ! \t\nnext line \xff\xfe end\n"
SHOW = b'printf "%s|%s|%s|%s|%s" "$V" "$CLSTR_SEQ" "$CLSTR_SLOT" "$CLSTR_HOST" "$(pwd)"'


def run_prelude(shell, prelude, then=SHOW, cwd=None, home=None, **env):
    """``prelude`` then ``then``, run by ``shell`` with ``env`` added:
    (status, stdout, stderr)."""
    env = dict(os.environ, HOME=home or os.environ.get("HOME", "/"), **env)
    env.pop("V", None)
    done = subprocess.run([shell, "-c", prelude + then], capture_output=True, cwd=cwd,
                          env=env, timeout=30)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_the_job_sees_its_facts_and_env_values_byte_for_byte(shell, tmp_path):
    prelude = job_prelude(12, 3, "user@lab01", [(b"V", HOSTILE)])
    status, out, err = run_prelude(shell, prelude, cwd=str(tmp_path))
    assert (status, err) == (0, b"")
    assert out == HOSTILE + b"|12|3|user@lab01|" + bytes(tmp_path)


def test_the_prelude_holds_no_byte_a_login_shells_quoting_mangles():
    # A newline (csh), ! (tcsh's history) and a backslash before a quote or
    # a backslash (fish) must come from the prelude's own variables.
    prelude = job_prelude(1, 1, "h", [(b"V", HOSTILE)], HOSTILE)
    assert b"\n" not in prelude and b"!" not in prelude
    assert b"\\\\" not in prelude and b"\\'" not in prelude


def test_plain_values_cost_no_fork():
    # The variables for special bytes come from a command substitution:
    # only values that hold such bytes pay for it.
    assert b"$(" not in job_prelude(1, 1, "h", [(b"V", b"it's $x")], b"~/a b")
    assert b"$(" in job_prelude(1, 1, "h", [(b"V", b"a\nb")])


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("workdir, expected", [
    (b"~", "HOME"),
    (b"~root/", "/root"),
    (b"~/new dir/x'y", "HOME/new dir/x'y"),
    (b"rel dir", "CWD/rel dir"),
    (b"-dash", "CWD/-dash"),
    (b"~not a user", "CWD/~not a user"),
    (b"ABS/made/here", "ABS/made/here"),
])
def test_workdir_is_made_and_entered_with_tilde_expanded_by_the_shell(shell, workdir,
                                                                      expected, tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    places = {"HOME": str(home), "CWD": str(cwd), "ABS": str(tmp_path / "abs")}
    workdir = workdir.replace(b"ABS", os.fsencode(places["ABS"]))
    for name, place in places.items():
        expected = expected.replace(name, place)
    (home / "rel dir").mkdir()
    # $CDPATH must not send a relative directory elsewhere (to home's).
    status, out, err = run_prelude(shell, job_prelude(1, 1, "h", (), workdir), cwd=str(cwd),
                                   home=str(home), CDPATH=str(home))
    assert (status, err) == (0, b"")
    assert out.split(b"|")[-1] == expected.encode()
    assert os.path.isdir(expected)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_workdir_that_cannot_be_made_ends_the_job_with_its_own_status(shell, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    status, out, err = run_prelude(shell, job_prelude(1, 1, "h", (), bytes(blocked) + b"/sub"),
                                   b"echo ran")
    assert (status, out) == (WORKDIR_FAILED, b"")
    assert err.endswith(b"clstr: --workdir %s/sub could not be entered\n" % bytes(blocked)), err


# -- the command line ------------------------------------------------------------

def run_clstr(*args, env=None):
    return subprocess.run([sys.executable, "-m", "clstr", "--ssh-command",
                           os.path.join(REPO, "tests", "fakessh")] + list(args),
                          cwd=REPO, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=env)


@pytest.mark.parametrize("args, mentions", [
    (["--env", "1ABC"], "--env '1ABC': not a variable name"),
    (["--env", "A-B"], "--env 'A-B': not a variable name"),
    (["--env", "CLSTR_SURELY_UNSET"], "--env CLSTR_SURELY_UNSET: CLSTR_SURELY_UNSET is not set"),
    (["--env", "BIG"], "--env and --workdir take"),
    (["--workdir", ""], "--workdir: empty"),
])
def test_env_and_workdir_mistakes_are_usage_errors(args, mentions, tmp_path):
    marker = tmp_path / "ran"
    env = dict(os.environ, BIG="x" * PRELUDE_MAX)
    env.pop("CLSTR_SURELY_UNSET", None)
    result = run_clstr("-n", "a", "-j", "touch %s" % marker, *args, env=env)
    lines = result.stderr.decode().splitlines()
    assert (result.returncode, len(lines), result.stdout) == (2, 1, b""), lines
    assert lines[0].startswith("clstr: error: " + mentions), lines
    assert not marker.exists()


def test_an_empty_value_is_passed_as_set_and_empty(tmp_path):
    result = run_clstr("-n", "a", "--env", "E", "-j", 'echo "[${E-unset}]"',
                       env=dict(os.environ, E=""))
    assert (result.returncode, result.stdout) == (0, b"[]\n"), result.stderr


def test_dry_run_shows_the_environment_and_workdir():
    result = run_clstr("--dry-run", "--no-multiplex", "-n", "a", "--env", "E",
                       "--workdir", "~/w", "-j", "true", env=dict(os.environ, E="e-value"))
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode()
    for shown in ("E=", "e-value", "CLSTR_SEQ=1", "CLSTR_SLOT=1", "CLSTR_HOST=", "cd ~", "/w"):
        assert shown in line, shown
