"""The one exception a user mistake raises, and how a command line reports it."""

import argparse
import signal
import sys
import threading


class InputError(ValueError):
    """Bad input from the user (a file, a shape, a flag). The message names what and where. A
    ValueError, so that API callers can catch the one type the README promises."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported like every other: one `error:` line, exit 2.
    Run as `python -m package.module`, a command names itself so, not by its file's name. Every
    option's help gives its default (add_argument)."""

    def __init__(self, *args, prog: str | None = None, **kwargs):
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if prog is None and spec is not None and sys.argv[0].endswith(".py"):
            prog = f"python -m {spec.name.removesuffix('.__main__')}"
        super().__init__(*args, prog=prog, **kwargs)

    def add_argument(self, *args, **kwargs):
        """An option's help gives its default where its own words do not."""
        action = super().add_argument(*args, **kwargs)
        default, words = action.default, action.help or ""
        if action.option_strings and not action.required and default is not None \
                and default is not False and default is not argparse.SUPPRESS \
                and default != "" and words is not argparse.SUPPRESS and "default" not in words:
            shown = ",".join(map(str, default)) if isinstance(default, tuple | list) else default
            shown = str(shown).replace("%", "%%")  # the words are argparse's %-format already
            action.help = f"{words} (default: {shown})".lstrip()
        return action

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def refuse(self, err) -> None:
        """A mistake found after parsing (a file, a folder): one `error:` line, exit 2."""
        self.exit(2, f"error: {err}\n")


def at_least(minimum: int):
    """argparse's type for a count (rows, steps, repeats, a width, a rank): a whole number of at
    least `minimum`; anything else is a usage error (one line, exit 2)."""
    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: at least {minimum}")
        return value

    return whole_number


SEED_LIMIT = 2**63  # torch.Generator().manual_seed takes a seed below this


def seed_argument(text: str) -> int:
    """argparse's type for --seed: a whole number in [0, 2**63), the range a torch generator
    takes; anything else is a usage error (one line, exit 2)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= seed < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{seed} is outside [0, 2**63)")
    return seed


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that every `finally` runs (temporary files go). A
    BaseException, like KeyboardInterrupt, so that no `except Exception` turns it into an error
    of another kind."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none): libraries write
    paragraphs, a one-line error has room for one."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _terminate(signum, frame):
    raise Terminated()


def cli_exit_code(run, *args) -> int:
    """Run a command's body: 0 when it succeeds; for a user mistake one line on stderr, no
    traceback, and exit code 2; for SIGINT or SIGTERM one line and 130 or 143, after every
    cleanup has run."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        run(*args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        name, code = ("interrupted (SIGINT)", 130) if isinstance(stop, KeyboardInterrupt) \
            else ("terminated (SIGTERM)", 143)
        written = getattr(stop, "outputs_written", None)
        said = (f"after its outputs were written, complete ({', '.join(map(str, written))})"
                if written else "before any output was replaced; none was left half-written")
        print(f"error: {name} {said}", file=sys.stderr)
        return code
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return 0
