"""Quoting user data in messages, cut to a readable length.

Every message that shows a line of a label file, a member name of an archive or any other text that came from
outside quotes it with `quote`: a label file of one 20 MB line (a zip of 20 KB can hold it) must give an error of a
few hundred characters, not of 80 MB. Pure Python, no imports: any module may use it.
"""

from __future__ import annotations

__all__ = ["QUOTE_LIMIT", "quote"]

# About two lines of a terminal: enough to recognise a label line (a 50-point polygon is ~1,000 characters, its
# start says what it is) or an archive member's path.
QUOTE_LIMIT = 200


def quote(text: str | bytes, limit: int = QUOTE_LIMIT) -> str:
    """`repr(text)` cut to about `limit` characters; when cut, it ends in `...` and the full length.

    Only the first `limit` characters are ever looked at, so quoting a huge string costs nothing. The result is at
    most `limit` characters plus the length note (about 30), whatever the text holds (a NUL byte shows as `\\x00`).
    """
    head = repr(text[:limit])
    if len(text) <= limit and len(head) <= limit:
        return head
    unit = "bytes" if isinstance(text, bytes) else "characters"
    return f"{head[:limit]}... ({len(text):,} {unit} in all)"
