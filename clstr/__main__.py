# The entry point of `python3 -m clstr`, and of clstr.pyz (build_zipapp.sh
# copies this file as the archive's __main__.py).  It must still parse on an
# old Python, even 2.7, so that Python can say it is too old instead of
# failing with a SyntaxError inside clstr: keep it to the plainest syntax.
# Its exit statuses are clstr/exits.py's (EXIT_USAGE, EXIT_INTERRUPTED),
# written out: nothing of clstr's is imported before the version check (a
# test keeps the two in step).
import sys

if sys.version_info < (3, 8):  # noqa: UP036 (the point: run on older Pythons)
    if sys.stderr is not None:
        sys.stderr.write("clstr: needs Python 3.8 or newer (this is %d.%d)\n"
                         % tuple(sys.version_info[:2]))
    sys.exit(2)

try:
    from clstr.cli import main  # noqa: E402
except KeyboardInterrupt:  # Ctrl-C while starting: no traceback
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
