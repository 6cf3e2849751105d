"""Every fenced code block of the project's Markdown files, tested as its marker says (see doc_blocks.py).

One test per block, in document order; the terminal summary counts them ("docs: N code blocks ...").
"""

from __future__ import annotations

import pytest

from docs.doc_blocks import ROOT, documents, parse
from docs.doc_kinds import evaluator

pytestmark = pytest.mark.slow
EXAMPLES = [example for path in documents() for example in parse(path, ROOT, evaluator)]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.parsed.where for e in EXAMPLES])
def test_block(example, workspace):
    example.namespace["workspace"] = workspace
    example.evaluate()
