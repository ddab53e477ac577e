"""The one exception type for mistakes a user can make (bad recipe, bad data, bad path).

The CLI turns a :class:`UserError` into one line on stderr and exit code 2; every other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. ``str(err)`` is the whole message, one or more lines.

    Messages name the file, line or dotted key at fault and, where there is one, the fix.
    """

    exit_code = 2


def nearest(name: str, choices) -> str | None:
    """Return the entry of ``choices`` closest to ``name`` (for 'did you mean'), or None."""
    import difflib

    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def one_line(e: BaseException) -> str:
    """An exception's message on one line (at most 300 characters), for a UserError that quotes it."""
    text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()).replace(":;", ":") or type(e).__name__
    if isinstance(e, KeyError):
        text = f"missing key {text}"
    return text if len(text) <= 300 else text[:297] + "..."
