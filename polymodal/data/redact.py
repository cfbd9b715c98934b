"""One way to quote a cell value in a message: short, with its digits masked.

Error messages and logs travel further than the data (terminals, CI logs, bug reports), so a cell value is never
quoted whole: a phone number, a card number or an email address in a bad cell must not leak through the error
that names the cell. The row and column in the same message say where to look.
"""

from __future__ import annotations

import re

_DIGIT = re.compile(r"\d")
QUOTE_CHARS = 12


def quote_value(value: object, limit: int = QUOTE_CHARS) -> str:
    """`value` as a quoted string of at most `limit` characters (then an ellipsis), every digit shown as '#'."""
    text = _DIGIT.sub("#", str(value))
    if len(text) > limit:
        text = text[:limit] + "…"
    return repr(text)
