"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class PhasecodeError(Exception):
    """A problem the user can fix (bad input, missing file, mismatched artifact)."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (for one-line user errors)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
