"""The in-process mux transport: an attempt through a host's ControlMaster
with no local process (clstr speaks the protocol itself, see muxclient.py).

What a mux client's failure means for the node:
- the master cannot be reached, or speaks a protocol clstr does not know:
  nothing ran, so the attempt goes on through the ssh client instead (which
  makes a connection of its own if the master has gone);
- the master refuses the session (sshd's MaxSessions): transient, like a
  throttled connection;
- the master drops the session without an exit status: the connection was
  lost, as when a plain ssh is cut off;
- the master stops answering (a stopped or hung ssh process): the master's
  owner (multiplex.py) kills it and says so through ``master_killed``, and
  the session ends as a lost connection whatever clstr had done to it.  A
  session that ends without an exit status first waits for the owner's
  verdict on its master: a stop that gave up on the session (a frozen
  master relays nothing) is not the job's timeout if the master was frozen.
"""

from .failures import Failure, Kind, MasterKilled, job_exit
from .muxclient import MuxAttempt, MuxError
from .transport import Session


class MuxSession(Session):
    """Runs ``remote_command`` (bytes, the wrapped job) through the master
    at ``control_path``; its stderr passes through ``reports``
    (endreport.ReportReader).  ``fall_back(error, detail, on_output,
    on_end)`` starts and returns the Session that takes over when the mux
    client cannot be used (nothing has run then).  ``reply_timeout``: how
    long the master has to answer (muxclient.ControlSession).  ``verdict(then)``
    has the master's owner (multiplex.py) check that it answers, killing it
    if not, then calls ``then()``.  ``stdin_data``: what to write on the
    command's stdin first (a big job's command), or None."""

    def __init__(self, loop, control_path, remote_command, on_output, on_end, fall_back,
                 reports, reply_timeout=None, verdict=None, stdin_data=None):
        self._on_end = on_end
        self._on_output = on_output
        self._fall_back = fall_back
        self._reports = reports
        self._verdict = verdict
        self._master_killed = None
        self._paused = False
        self._stopped = False
        self._left = False
        self._inner = MuxAttempt(loop, control_path, remote_command, self._output,
                                 self._exited, self._failed, reply_timeout=reply_timeout,
                                 stdin_data=stdin_data)

    def master_killed(self, detail):
        """clstr has killed this session's master for not answering."""
        self._master_killed = detail

    def _output(self, stream, data):
        if stream == 2:
            data = self._reports.feed(data)
        if data:
            self._on_output(stream, data)

    def _flush_reports(self):
        rest = self._reports.close()
        if rest:
            self._on_output(2, rest)

    def _exited(self, code):
        self._flush_reports()
        failure = None if code == 0 else job_exit(code)
        self._on_end(code, failure)

    def _failed(self, error, detail):
        if self._left:
            return
        if error in (MuxError.CONNECT_FAILED, MuxError.PROTOCOL_MISMATCH) and not self._stopped:
            self._inner = self._fall_back(error, detail, self._on_output, self._on_end)
            if self._paused:
                self._inner.pause()
            return
        if self._master_killed is not None:
            self._flush_reports()
            self._on_end(None, MasterKilled(self._master_killed))
            return
        if error in (MuxError.CONNECTION_LOST, MuxError.ABANDONED) and self._verdict:
            verdict, self._verdict = self._verdict, None
            verdict(lambda: self._failed(error, detail))
            return
        self._flush_reports()
        if error is MuxError.SESSION_REFUSED:
            failure = Failure(Kind.THROTTLED, "session refused: %s" % detail)
        elif error is MuxError.CONNECTION_LOST:
            failure = Failure(Kind.CONNECTION_LOST, "shared connection lost: %s" % detail)
        else:
            failure = Failure(Kind.INTERRUPTED, "stopped by clstr")
        self._on_end(None, failure)

    def stop(self, grace):
        self._stopped = True
        self._inner.stop(grace)

    def kill(self):
        self._stopped = True
        self._left = True
        (self._inner.close if isinstance(self._inner, MuxAttempt) else self._inner.kill)()

    def pause(self):
        self._paused = True
        self._inner.pause()

    def resume(self):
        self._paused = False
        self._inner.resume()
