"""The one exception the command-line tools turn into a single readable line and a non-zero exit, the wrapper every
``lvmmed`` command runs in, and the parsing of seed lists the commands share."""

from __future__ import annotations

import sys
from typing import Callable


class UsageError(Exception):
    """A problem with the user's input (paths, data, weights, options), reported as one line without a traceback.

    Example:
        >>> raise UsageError("--data /nope does not exist")
        Traceback (most recent call last):
        ...
        lvmmed_ext.errors.UsageError: --data /nope does not exist
    """


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line. A ``UsageError`` raised in a DataLoader worker reaches the main process
    with torch's "Caught UsageError in DataLoader worker process N. Original Traceback ..." text: its last line is
    the user's message."""
    text = str(e)
    if "Original Traceback" in text:
        for line in reversed(text.strip().splitlines()):
            name = f"{type(e).__name__}: "
            if name in line:
                return line.split(name, 1)[1].strip()
    return " ".join(text.split("\n")).strip()


def run_command(prog: str, body: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Runs one ``lvmmed`` command: a ``UsageError`` becomes ``"<prog>: error: <one line>"`` on stderr and exit 2, a
    Ctrl-C ``"<prog>: <interrupted>"`` and exit 130."""
    try:
        return body()
    except UsageError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130


def parse_seeds(text: str | None, default: int, flag: str = "--seeds") -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (distinct integers; ``[default]`` when not given); ``UsageError`` naming
    ``flag``."""
    if text is None:
        return [default]
    try:
        seeds = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds:
        raise UsageError(f"{flag} lists no seed: {text!r}")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"{flag} must not repeat a seed, got {text!r}")
    return seeds
