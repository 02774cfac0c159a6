"""The one exception a user mistake raises: main.py turns it into a one-line error and exit code 2."""


class InputError(Exception):
    """Bad input from the user (a file, a shape, a flag). The message names what and where."""
