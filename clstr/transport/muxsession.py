"""The in-process mux transport: an attempt through a host's ControlMaster
with no local process (clstr speaks the protocol itself, see muxclient.py).

What a mux client's failure means for the node (``failures.classify_mux``
names the kind from what the master said):
- the master cannot be reached, or speaks a protocol clstr does not know:
  nothing ran, so the attempt goes on through the ssh client instead (which
  makes a connection of its own if the master has gone);
- the master refuses the session (sshd's MaxSessions), or drops it without
  an exit status: a failure, as ``classify_mux`` names it;
- the master stops answering (a stopped or hung ssh process): the master's
  owner (masterwatch.py) kills it and says so through ``master_killed``, and
  the session ends as a lost connection whatever clstr had done to it.  A
  session that ends without an exit status first waits for the owner's
  verdict on its master: a stop that gave up on the session (a frozen
  master relays nothing) is not the job's timeout if the master was frozen.
"""

from ..failures import MuxError, classify_mux, job_exit
from .interface import Session
from .muxclient import MuxAttempt


class MuxSession(Session):
    """Runs ``remote_command`` (bytes, the wrapped job) through the master
    at ``control_path``, reporting to ``handler``
    (transport.AttemptHandler); its stderr passes through ``reports``
    (endreport.ReportReader; None: stderr as it comes, for a worker, whose
    jobs' sessions read their own reports).  ``fall_back(error, detail)`` starts and
    returns the Session that takes over when the mux client cannot be used
    (nothing has run then; it reports to the same handler).
    ``reply_timeout``: how long the master has to answer
    (muxclient.ControlSession).  ``carrier``: the master's side
    (masterwatch.py): ``carry(session)`` and ``drop(session)`` as the session
    starts and leaves it, ``check(then)`` has the master checked that it
    answers, killing it if not, then calls ``then()``.  ``stdin_data``: what
    to write on the command's stdin first (a big job's command), or None."""

    def __init__(self, loop, control_path, remote_command, handler, fall_back, reports,
                 carrier, reply_timeout=None, stdin_data=None):
        self._handler = handler
        self._fall_back = fall_back
        self._reports = reports
        self._carrier = carrier
        self._checked = False
        self._master_killed = None
        self._paused = False
        self._stopped = False
        self._left = False
        # What ``send`` wrote before the master took the session: it is in
        # a pipe the master never got if the session falls back, so the
        # session that takes over gets it again (None once opened).
        self._unopened = []
        self._inner = MuxAttempt(loop, control_path, remote_command, self._output,
                                 self._exited, self._failed, on_opened=self._opened,
                                 reply_timeout=reply_timeout, stdin_data=stdin_data)
        carrier.carry(self)

    def _opened(self):
        self._unopened = None

    def master_killed(self, detail):
        """clstr has killed this session's master for not answering."""
        self._master_killed = detail

    def _output(self, stream, data):
        if stream == 2 and self._reports is not None:
            data = self._reports.feed(data)
        if data:
            self._handler.output(stream, data)

    def _end(self, code, failure):
        self._carrier.drop(self)
        rest = self._reports.close() if self._reports is not None else b""
        if rest:
            self._handler.output(2, rest)
        self._handler.ended(code, failure)

    def _exited(self, code):
        self._end(code, job_exit(code))

    def _failed(self, error, detail):
        if self._left:
            return
        if error in (MuxError.CONNECT_FAILED, MuxError.PROTOCOL_MISMATCH) and not self._stopped:
            self._carrier.drop(self)
            self._inner = self._fall_back(error, detail)
            for data in self._unopened or ():
                self._inner.send(data)
            self._unopened = None
            if self._paused:
                self._inner.pause()
            return
        if (self._master_killed is None and not self._checked
                and error in (MuxError.CONNECTION_LOST, MuxError.ABANDONED)):
            self._checked = True
            self._carrier.check(lambda: self._failed(error, detail))
            return
        self._end(None, classify_mux(error, detail, self._master_killed))

    def send(self, data):
        """Write ``data`` on the command's stdin (a worker's frames), through
        whichever client carries it now."""
        if self._unopened is not None:
            self._unopened.append(data)
        self._inner.send(data)

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
