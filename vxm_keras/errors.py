"""The one error type of what a user gave: a file, a flag, a pair of scans that cannot be used.

Commands report a :class:`UserError` in one line (``error: <message>``, exit code 2) and never
with a traceback; every message names the file or the flag and the problem. It subclasses
``ValueError``, so code that calls the library and catches ``ValueError`` keeps working.
"""

__all__ = ['UserError', 'fail']


class UserError(ValueError):
    """An input (file, flag, pair of scans) that cannot be used; the message says which and why."""


def fail(message):
    """Stop with a user error: ``error: message`` on stderr, exit code 2 (``cli.execute``)."""
    raise UserError(message)
