"""The one base of the errors a user can fix (bad params, missing or broken files, a diverged run):
the command line prints such an error as one line and exits 2, never as a traceback."""


class TcmError(Exception):
    """An error whose message names the file, key or value at fault and what to do."""
