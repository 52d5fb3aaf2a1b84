"""The two ways a fine-tuning run ends early on purpose, each reported as one ``error: ...`` line."""
from __future__ import annotations

__all__ = ['FinetuneError', 'RunFailedError', 'first_line']


class FinetuneError(Exception):
    """A problem with the user's input or setup: one line on stderr, exit status 2."""

    exit_status = 2


class RunFailedError(FinetuneError):
    """Training could not go on (the loss diverged, the disk is full): one line on stderr, exit status 1.
    The last complete checkpoint stays in place, so the run can be continued or restarted."""

    exit_status = 1


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), bounded."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:600]
