"""The one user-error type every subcommand raises.

It lives in the core, not in `pullwake.cli`, so that raising it does not pull
the whole command line (and every subcommand) into the module that raises.
"""


class CLIError(Exception):
    """A user error: printed as one line, exit status 2, never a traceback."""
