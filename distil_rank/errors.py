"""The one exception a user mistake raises, and how a command line reports it."""

import sys


class InputError(Exception):
    """Bad input from the user (a file, a shape, a flag). The message names what and where."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none): libraries write
    paragraphs, a one-line error has room for one."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def cli_exit_code(run, *args) -> int:
    """Run a command's body: 0 when it succeeds; for a user mistake one line on stderr, no
    traceback, and exit code 2."""
    try:
        run(*args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
