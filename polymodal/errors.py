"""The one base class of the errors a user can fix (a bad option, an unknown column, a broken file).

The CLI shows a `UserError` as `error: <message>` (exit code 2); any other exception is a bug in polymodal and is
reported as an internal error with its traceback. A `ValueError` subclass, so `except ValueError` keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input or settings given by the user: the message names what is wrong and how to fix it."""
