"""The one exception a user mistake raises, and how a command line reports it."""

import sys


class InputError(Exception):
    """Bad input from the user (a file, a shape, a flag). The message names what and where."""


def cli_exit_code(run, *args) -> int:
    """Run a command's body: 0 when it succeeds; for a user mistake one line on stderr, no
    traceback, and exit code 2."""
    try:
        run(*args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
