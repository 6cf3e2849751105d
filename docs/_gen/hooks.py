"""MkDocs hook: Sphinx roles in the rendered docstrings.

The docstrings are written for Sphinx (``:mod:`relearn.x```); on the site the role prefix is dropped and
the name stays a code span.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj|const):(<code>)")


def on_page_content(html: str, **kwargs: object) -> str:
    """Drop ``:role:`` before a code span."""
    return ROLE.sub(r"\1", html)
