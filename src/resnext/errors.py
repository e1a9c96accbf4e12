"""Errors a user can cause. The CLI prints their message as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """A problem with the user's input (a flag, a path, a file): the message says what and how to fix it."""

    exit_code = 2


def listed(names, limit: int = 5) -> str:
    """The first `limit` names joined by commas, then "and N more": a list quoted inside a one-line error."""
    names = [str(name) for name in names]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line, for quoting inside a one-line error."""
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


class TrainingDiverged(UserError):
    """The loss stayed non-finite, or the weights became non-finite: training stops, the last good checkpoint stays."""

    exit_code = 3


class CheckpointNotSaved(UserError):
    """The checkpoint written on the way out (end, preemption, --prof, --run-epochs) failed: the run exits non-zero,
    since the steps after the newest checkpoint on disk would otherwise be lost without notice."""

    exit_code = 1


class JoinTimeout(UserError):
    """A distributed process waited --join-timeout seconds for ranks that never came (a node that was not launched or
    cannot reach the rendezvous store): one line naming them, instead of a hang."""

    exit_code = 1
