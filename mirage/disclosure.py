"""The disclosure every Mirage client shows: the returned media is synthetic, and the face must be yours to use.

Shared by the server (``/config``, the answer), the web page's wording and the
desktop client, so all of them say the same thing.
"""

from __future__ import annotations

#: One sentence: what Mirage returns, and what the person confirms before using it.
SYNTHETIC_NOTICE = (
    "The video Mirage returns is synthetic (AI-modified): only use a face you have the right to use, "
    "and tell the people who see it."
)
