"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class PhasecodeError(Exception):
    """A problem the user can fix (bad input, missing file, mismatched artifact)."""
