"""clstr's exit statuses, in one place (README.md and ``clstr --help`` list
them).  Every status clstr ends with is one of these names."""

import signal

# Every job completed, or --halt ...,success=N was met.
EXIT_OK = 0
# Some job did not complete: no node left to run it, or given up (--timeout,
# --job-failure job, --max-attempts, --retries), or --halt ...,fail=N ended
# the run; the failure report says which.
EXIT_INCOMPLETE = 1
# A usage or input error: nothing was started.
EXIT_USAGE = 2
# clstr could not write one of its own outputs (errors.LocalIOError).
EXIT_LOCAL_IO = 3
# clstr's stdout was closed (`clstr | head`), as a shell reports SIGPIPE.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
# Stopped by a signal, as a shell reports it: 128 + the signal's number.
SIGNAL_EXITS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
EXIT_INTERRUPTED = SIGNAL_EXITS[signal.SIGINT]
