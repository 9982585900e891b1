"""How to call ssh: the only module that knows ssh's options."""

from .endreport import RUN_TOKEN
from .wrapper import wrapped_command


class SshSettings:
    """How to call ssh: the command (already split into words), the user's
    ``-o`` options, and the timeouts clstr sets by default."""

    def __init__(self, command=("ssh",), user_options=(), connect_timeout=5,
                 alive_interval=5, alive_count=3):
        # ServerAliveInterval takes whole seconds.
        alive_interval = max(1, int(round(alive_interval)))
        self.command = list(command)
        self.user_options = list(user_options)
        self.connect_timeout = connect_timeout
        self.alive_interval = alive_interval
        self.alive_count = alive_count

    def default_options(self):
        """clstr's own options.  ssh keeps the first value it obtains for an
        option, so these come after the user's and the user can override
        every one; ~/.ssh/config still applies to whatever we do not set."""
        return [
            # Never prompt for a password or passphrase: a node that wants one
            # is a broken node, and a prompt would hang the run.
            "BatchMode=yes",
            # Fail fast on dead or silent hosts instead of the TCP default of
            # minutes.
            "ConnectTimeout=%d" % max(1, int(round(self.connect_timeout))),
            # Notice a node that hangs mid-job (TCP open, nothing answering):
            # ssh gives up after interval * count seconds.
            "ServerAliveInterval=%d" % self.alive_interval,
            "ServerAliveCountMax=%d" % self.alive_count,
        ]

    def _argv(self, host, options, extra_args=(), remote=None):
        # User options first: ssh keeps the first value it sees.  ``--`` ends
        # ssh's options, so no hostname can ever be read as one.
        argv = list(self.command)
        for option in self.user_options + options + self.default_options():
            argv += ["-o", option]
        argv += list(extra_args) + ["--", host]
        if remote is not None:
            argv.append(remote)
        return argv

    def argv(self, host, command, control_path=None, log_path=None, prelude=b"",
             token=RUN_TOKEN):
        """The argv running ``command`` (bytes) on ``host`` under the remote
        wrapper, after ``prelude`` (transport/prelude.py), reporting with
        ``token``, through the master at ``control_path`` if given.  If that
        master has gone, ssh quietly makes a connection of its own.

        ``log_path``: the file ssh's own messages go to instead of stderr
        (``-E``), for clstr to read why it failed.  ssh then writes every
        message of its log there, errors included, and stderr carries only
        the job's (and the rare message ssh prints, not logs, such as
        "Connection to H closed by remote host.", which plain ssh prints
        whatever the LogLevel).  So LogLevel INFO, which says why a
        connection ended ("Timeout, server not responding"), only fills that
        file: clstr never adds to the job's output what the user's LogLevel
        hides ("Warning: Permanently added ..." under LogLevel ERROR)."""
        return self.remote_argv(host, wrapped_command(command, prelude=prelude, token=token),
                                control_path, log_path)

    def remote_argv(self, host, remote, control_path=None, log_path=None):
        """As ``argv``, but running ``remote`` (bytes), a command line for
        the login shell, as it is (a worker: wrapper.login_shell_command)."""
        options, extra_args = [], []
        if control_path:
            options = ["ControlMaster=no", "ControlPath=" + control_path]
        if log_path:
            options.append("LogLevel=INFO")
            # After the --ssh-command words: ssh takes the last -E given.
            extra_args = ["-E", log_path]
        return self._argv(host, options, extra_args, remote=remote)

    def master_argv(self, host, control_path, idle_exit):
        """The argv starting a ControlMaster for ``host``.  With ControlPersist
        and -N the foreground ssh exits 0 once the master is ready (255 if it
        could not connect), and the master leaves by itself after
        ``idle_exit`` seconds without sessions, even if clstr was killed."""
        # LogLevel VERBOSE (into the master's log file, never the user's
        # output) says when the master has authenticated: the evidence that a
        # missing socket means no connection sharing, not a broken host.
        options = ["ControlMaster=yes", "ControlPath=" + control_path,
                   "ControlPersist=%d" % idle_exit, "LogLevel=VERBOSE"]
        return self._argv(host, options, extra_args=["-N"])
