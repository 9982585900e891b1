"""A throwaway SSH cluster on loopback: one real sshd, many node names.

``LoopbackCluster`` starts ``/usr/sbin/sshd`` on a free 127.0.0.1 port with
fresh host and user keys, and writes an ssh client config that maps node
names onto it:

- ``node001``... log in to the sshd as an unprivileged user (``clstrtest``,
  created when running as root: root's rc files here run pyenv, ~80 ms a
  session, which would swamp every measurement);
- ``dead001``... point at a port where nothing listens (connection refused);
- ``silent001``... point at a listener that accepts and never sends a banner;
- ``badkey001``... offer a key the sshd does not accept;
- ``wronghost001``... expect a different host key;
- ``bashnode001``... log in as a user whose login shell is bash (``clstrbash``);
- ``rcnode001``... log in as a bash user whose ``~/.bashrc`` talks
  (``clstrrc``: it prints "hello from bashrc"); tests never edit either
  user's files, as concurrent runs share them;
- ``homenode...`` log in as a bash user (``clstrhome``) whose ``~/.bashrc``
  gives each node name a home of its own when the session names its node
  (``ssh_command_naming_sessions``): the session starts in
  ``~clstrhome/nodes/<name>`` (made if missing), as on machines that do not
  share one home, and notes each session's command in ``.sessions`` there
  (``node_home``, ``sessions_on``);
- ``envnode001``... to ``envnode016`` log in like ``node*`` and set
  ``CLSTR_TEST_NODE`` to their own name in the session, so a job can act
  differently on one node (all nodes are this one machine).

``local_client()`` gives a third unprivileged user (``clstrlocal``, created
when running as root) a copy of the client key and config of its own, so
that a test can run clstr itself as that user: the local process limit
(``ulimit -u``) counts all of a user's processes and does not bind root.

``CLSTR_TEST_SSHD`` names another sshd binary (a missing one shows that CI
fails, instead of skipping, without sshd).

Only loopback is ever contacted.  Usable from tests, the demo and the
benchmark; ``python3 tests/cluster.py`` starts one until Ctrl-C.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SSHD = os.environ.get("CLSTR_TEST_SSHD", "/usr/sbin/sshd")
TEST_USER = "clstrtest"
# A second login user whose shell is bash: the remote wrapper must work under
# bash as well as dash.
BASH_USER = "clstrbash"
# A bash login user whose ~/.bashrc prints a line, as some sites' do: what
# clstr learns from a chatty login shell.  Its own user, so that no test
# edits a shared account's files while another run uses them.
RC_USER = "clstrrc"
RC_BASHRC = b"echo hello from bashrc\n"
# A bash login user whose sessions each start in a home of their node's own
# (below its real home), noting their command there: what --send and
# --return do on machines that share no home directory.
HOME_USER = "clstrhome"
HOME_BASHRC = (b'if [ -n "$CLSTR_TEST_NODE" ]; then '
               b'mkdir -p "$HOME/nodes/$CLSTR_TEST_NODE" && cd "$HOME/nodes/$CLSTR_TEST_NODE" && '
               b'{ printf "%s\n" "$BASH_EXECUTION_STRING" >>.sessions; } 2>/dev/null; fi\n')
# The user tests run clstr as when its local limits matter: neither root nor
# a login user (whose remote sessions would count against its process limit).
LOCAL_USER = "clstrlocal"
# How many envnode names the client config spells out (ssh_config's SetEnv
# takes no %n token, so each name needs a block of its own).
ENV_NODES = 16


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", path],
                   check=True, stdin=subprocess.DEVNULL, timeout=30)


def ensure_test_user(name=TEST_USER, shell="/bin/sh"):
    """An unprivileged login user ``name`` with ``shell`` when root, else
    ourselves (None for any user but the first: we have only one)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name if name == TEST_USER else None
    try:
        pwd.getpwnam(name)
    except KeyError:
        # Two test processes may race here; the loser's useradd fails harmlessly.
        subprocess.run(["useradd", "-m", "-s", shell, name],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        pwd.getpwnam(name)
    # sshd without PAM refuses a locked ("!") account; "*" is not locked but
    # still has no password.
    subprocess.run(["usermod", "-p", "*", name], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return name


def ensure_rc_user(name=RC_USER, bashrc=RC_BASHRC):
    """``name``, with ``bashrc`` as its ~/.bashrc (None when not root).  The
    file is put in place whole (a rename), and only when it differs, so a
    concurrent run never reads half of it."""
    name = ensure_test_user(name, "/bin/bash")
    if name is None:
        return None
    entry = pwd.getpwnam(name)
    path = os.path.join(entry.pw_dir, ".bashrc")
    try:
        with open(path, "rb") as handle:
            if handle.read() == bashrc:
                return name
    except OSError:
        pass
    fd, partial = tempfile.mkstemp(dir=entry.pw_dir, prefix=".bashrc.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(bashrc)
    os.chown(partial, entry.pw_uid, entry.pw_gid)
    os.chmod(partial, 0o644)
    os.replace(partial, path)
    return name


class _Listener:
    """A loopback TCP listener serving each connection in a thread of its own
    way (``_accepted``); ``port`` 0 picks a free port."""

    def __init__(self, port=0):
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", port))
        self._server.listen(128)
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._open = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._open.append(connection)
            self._accepted(connection)

    def _accepted(self, connection):
        raise NotImplementedError

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        for connection in self._open:
            connection.close()
        self._server.close()


class _SilentListener(_Listener):
    """Accepts TCP connections and never says a word: a host that never sends
    its SSH banner."""

    def _accepted(self, connection):
        pass  # held open, silent, until close()


class _Forwarder(_Listener):
    """Forwards TCP connections from ``port`` to sshd at ``target``: a node
    that was down comes up when a forwarder starts on its port."""

    def __init__(self, port, target):
        self._target = target
        super().__init__(port)

    def _accepted(self, client):
        client.settimeout(None)
        upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
        upstream.settimeout(None)
        self._open.append(upstream)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class LoopbackCluster:
    """A running loopback sshd and an ssh config naming nodes on it."""

    def __init__(self, max_startups="1000:30:1000", max_sessions=100,
                 password_authentication=False):
        self.max_startups = max_startups
        self.max_sessions = max_sessions
        # Offer password authentication too (no password ever matches): a
        # client that may prompt would ask for one.
        self.password_authentication = password_authentication
        self.tmpdir = None
        self.port = None
        self.user = None
        self.bash_user = None
        self.rc_user = None
        self.home_user = None
        self._sshd = None
        self._silent = None
        self._forwarders = []

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        if not os.path.exists(SSHD):
            raise RuntimeError("%s not found: install openssh-server "
                               "(apt-get install openssh-server)" % SSHD)
        self.user = ensure_test_user()
        self.bash_user = ensure_test_user(BASH_USER, "/bin/bash")
        self.rc_user = ensure_rc_user()
        self.home_user = ensure_rc_user(HOME_USER, HOME_BASHRC)
        self.tmpdir = tempfile.mkdtemp(prefix="clstr-cluster-")
        # sshd (StrictModes) and the login user must be able to read the
        # authorized keys; the directory holds no secret of the user's.
        os.chmod(self.tmpdir, 0o755)
        for name in ("host_key", "user_key", "other_key", "other_host_key"):
            _keygen(self.path(name))
        shutil.copy(self.path("user_key.pub"), self.path("authorized_keys"))
        os.chmod(self.path("authorized_keys"), 0o644)
        self.port = _free_port()
        self.dead_port = _free_port()
        self._silent = _SilentListener()
        self.late_port = _free_port()
        self._write_sshd_config()
        self._write_client_config()
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(self.path("sshd.log"), "wb")
        self._sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", self.path("sshd_config")],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self._wait_for_sshd()

    def _wait_for_sshd(self):
        # Wait for sshd to say it listens, instead of probing with bare TCP
        # connections (recent sshd penalises clients that do that).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if "Server listening on" in self.sshd_log():
                return
            if self._sshd.poll() is not None:
                break
            time.sleep(0.02)
        log = self.sshd_log()
        self.stop()
        raise RuntimeError("sshd did not start:\n" + log[-2000:])

    def stop(self):
        if self._sshd is not None:
            self._sshd.terminate()
            try:
                self._sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._sshd.kill()
                self._sshd.wait(timeout=10)
            self._sshd = None
            self._kill_user_processes()
        self.take_down_late_nodes()
        if self._silent is not None:
            self._silent.close()
            self._silent = None
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def _kill_user_processes(self):
        """Whatever runs from this cluster's sessions, orphans included, but
        nothing of another cluster that logs in as the same user."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._our_processes():
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def _our_processes(self):
        # sshd puts "client-address client-port server-address server-port"
        # in SSH_CONNECTION, and every process started in a session keeps it.
        ours = []
        for pid in self._login_user_pids():
            try:
                with open("/proc/%d/environ" % pid, "rb") as handle:
                    environ = handle.read().split(b"\0")
            except OSError:
                continue
            if any(variable.startswith(b"SSH_CONNECTION=")
                   and variable.split()[-1] == str(self.port).encode()
                   for variable in environ):
                ours.append(pid)
        return ours

    def _login_users(self):
        return [user for user in (self.user, self.bash_user, self.rc_user, self.home_user)
                if user]

    def _login_user_pids(self):
        """Pids of processes run by the cluster's login users."""
        uids = {pwd.getpwnam(user).pw_uid for user in self._login_users()}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat("/proc/" + entry).st_uid in uids:
                    yield int(entry)
            except OSError:
                continue

    # -- configuration ----------------------------------------------------

    @property
    def sshd_pid(self):
        """The listening sshd's pid; each connection is served by processes
        below it."""
        return self._sshd.pid

    def path(self, name):
        return os.path.join(self.tmpdir, name)

    def _write_sshd_config(self):
        lines = [
            "ListenAddress 127.0.0.1",
            "Port %d" % self.port,
            "HostKey %s" % self.path("host_key"),
            "PidFile %s" % self.path("sshd.pid"),
            "AuthorizedKeysFile %s" % self.path("authorized_keys"),
            "AllowUsers %s" % " ".join(self._login_users()),
            "UsePAM no",
            "PasswordAuthentication %s" % ("yes" if self.password_authentication else "no"),
            "KbdInteractiveAuthentication no",
            "AcceptEnv CLSTR_TEST_*",
            "PubkeyAuthentication yes",
            # The keys live in a temp dir that is not the user's home.
            "StrictModes no",
            # Every node name reaches this one sshd, so it sees the handshakes
            # of a whole cluster at once.
            "MaxStartups %s" % self.max_startups,
            "MaxSessions %d" % self.max_sessions,
            "UseDNS no",
            "LogLevel INFO",
        ]
        with open(self.path("sshd_config"), "w") as config:
            config.write("\n".join(lines) + "\n")

    def _write_client_config(self):
        host_key = open(self.path("host_key.pub")).read().strip()
        other_host_key = open(self.path("other_host_key.pub")).read().strip()
        address = "[127.0.0.1]:%d" % self.port
        with open(self.path("known_hosts"), "w") as known:
            known.write("%s %s\n" % (address, host_key))
            known.write("[127.0.0.1]:%d %s\n" % (self.late_port, host_key))
        with open(self.path("wrong_known_hosts"), "w") as known:
            known.write("%s %s\n" % (address, other_host_key))

        def block(pattern, port, key="user_key", known="known_hosts", user=self.user, env=None):
            return "\n".join([
                "Host %s" % pattern,
                "    HostName 127.0.0.1",
                "    Port %d" % port,
                "    User %s" % user,
                "    IdentityFile %s" % self.path(key),
                "    IdentitiesOnly yes",
                "    UserKnownHostsFile %s" % self.path(known),
                "    StrictHostKeyChecking yes",
                "    LogLevel ERROR",
                ] + (["    SetEnv %s" % env] if env else []) + [""])

        with open(self.path("ssh_config"), "w") as config:
            config.write(block("node*", self.port))
            if self.bash_user:
                config.write(block("bashnode*", self.port, user=self.bash_user))
            if self.rc_user:
                config.write(block("rcnode*", self.port, user=self.rc_user))
            if self.home_user:
                config.write(block("homenode*", self.port, user=self.home_user))
            config.write(block("dead*", self.dead_port))
            config.write(block("late*", self.late_port))
            config.write(block("silent*", self._silent.port))
            config.write(block("badkey*", self.port, key="other_key"))
            config.write(block("wronghost*", self.port, known="wrong_known_hosts"))
            for name in self.env_nodes(ENV_NODES):
                config.write(block(name, self.port, env="CLSTR_TEST_NODE=" + name))

    # -- what tests use -----------------------------------------------------

    @property
    def ssh_config(self):
        return self.path("ssh_config")

    def local_client(self):
        """(user name, ssh config path) for running clstr as LOCAL_USER: a
        copy of the config naming a copy of the key, both its own (ssh will
        not use a key others can read).  None when not root."""
        if os.geteuid() != 0:
            return None
        ensure_test_user(LOCAL_USER)
        entry = pwd.getpwnam(LOCAL_USER)
        directory = self.path("local")
        if not os.path.isdir(directory):
            os.mkdir(directory, 0o755)
            shutil.copy(self.path("user_key"), os.path.join(directory, "user_key"))
            with open(self.ssh_config) as source:
                config = source.read().replace(self.path("user_key"),
                                               os.path.join(directory, "user_key"))
            with open(os.path.join(directory, "ssh_config"), "w") as copy:
                copy.write(config)
            for name in ("user_key", "ssh_config"):
                os.chown(os.path.join(directory, name), entry.pw_uid, entry.pw_gid)
            os.chmod(os.path.join(directory, "user_key"), 0o600)
        return LOCAL_USER, os.path.join(directory, "ssh_config")

    @property
    def ssh_argv(self):
        return ["ssh", "-F", self.ssh_config]

    @property
    def ssh_command(self):
        return "ssh -F %s" % self.ssh_config

    @staticmethod
    def _names(prefix, count):
        return ["%s%03d" % (prefix, n) for n in range(1, count + 1)]

    def nodes(self, count, prefix="node"):
        return self._names(prefix, count)

    def dead_nodes(self, count):
        return self._names("dead", count)

    def silent_nodes(self, count):
        return self._names("silent", count)

    def badkey_nodes(self, count):
        return self._names("badkey", count)

    def wronghost_nodes(self, count):
        return self._names("wronghost", count)

    def env_nodes(self, count):
        """Names whose sessions have CLSTR_TEST_NODE set to the name (at most
        ENV_NODES of them)."""
        assert count <= ENV_NODES, count
        return self._names("envnode", count)

    def ssh_command_naming_sessions(self, names, directory):
        """An ssh command line (for --ssh-command) that reaches every node
        as ``ssh_command`` does and sets CLSTR_TEST_NODE to each of
        ``names`` in its sessions, for any names and any number of them
        (``env_nodes`` has 16).  Its config, written in ``directory``, puts
        a SetEnv block per name before this cluster's config: ssh takes the
        first value it finds, and SetEnv has no %n token."""
        path = os.path.join(str(directory), "ssh_config_naming_sessions")
        with open(path, "w") as config:
            for name in names:
                config.write("Host %s\n    SetEnv CLSTR_TEST_NODE=%s\n" % (name, name))
            with open(self.ssh_config) as ours:
                config.write(ours.read())
        return "ssh -F %s" % path

    def home_nodes(self, count, tag):
        """``count`` homenode names holding ``tag`` (a test run's RUN_ID), each
        with a home of its own once its sessions name it (see
        HOME_BASHRC); None when not root."""
        if not self.home_user:
            return None
        return ["homenode%sx%03d" % (tag, n) for n in range(1, count + 1)]

    def node_home(self, name):
        """The directory a homenode's sessions start in."""
        return os.path.join(pwd.getpwnam(self.home_user).pw_dir, "nodes", name)

    def sessions_on(self, name):
        """The commands of the sessions that homenode ``name`` started, in
        order (a line each)."""
        try:
            with open(os.path.join(self.node_home(name), ".sessions"), "rb") as trace:
                return trace.read().splitlines()
        except FileNotFoundError:
            return []

    def late_nodes(self, count):
        """Names refused until ``bring_up_late_nodes()`` is called."""
        return self._names("late", count)

    def bring_up_late_nodes(self):
        self._forwarders.append(_Forwarder(self.late_port, self.port))

    def take_down_late_nodes(self):
        while self._forwarders:
            self._forwarders.pop().close()

    def sshd_log(self):
        try:
            with open(self.path("sshd.log"), errors="replace") as log:
                return log.read()
        except OSError:
            return ""

    def accepted_logins(self):
        """Client ports of the logins sshd accepted so far, in order: one per
        ssh connection that authenticated (a ControlMaster's jobs add none)."""
        return [int(port) for port in re.findall(
            r"Accepted publickey for \S+ from \S+ port (\d+)", self.sshd_log())]

    def throttled_connections(self):
        """How many connections sshd dropped for MaxStartups so far."""
        return self.sshd_log().count("past MaxStartups")

    def remote_processes(self, marker):
        """(pid, cmdline) of the login users' processes whose command line
        or environment holds ``marker`` (the "remote" side is this machine).
        A marker in a comment (``sleep 9 # m``) is gone once the shell execs
        ``sleep``; one in the environment (``M=m sleep 9``, or exported) is
        inherited by everything the job starts."""
        found = []
        for pid in self._login_user_pids():
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as handle:
                    cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
                with open("/proc/%d/environ" % pid, "rb") as handle:
                    environ = handle.read().decode("utf-8", "replace")
                with open("/proc/%d/stat" % pid) as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if (marker in cmdline or marker in environ) and state != "Z":
                found.append((pid, cmdline))
        return found

    def remote_processes_left(self, marker, timeout=10):
        """``remote_processes(marker)`` once they are gone, or after
        ``timeout`` seconds: what a stopped run left behind."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.remote_processes(marker)
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)


if __name__ == "__main__":
    with LoopbackCluster() as cluster:
        print("sshd on 127.0.0.1:%d, logging in as %s" % (cluster.port, cluster.user))
        print("try:   %s node001 uname -n" % cluster.ssh_command)
        print("clstr: python3 -m clstr --ssh-command '%s' -n node001 -j 'uname -n'"
              % cluster.ssh_command)
        print("Ctrl-C to stop.")
        sys.stdout.flush()
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
