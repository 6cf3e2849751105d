"""The fenced code blocks of the project's Markdown files and the kind each is tested as.

Sybil lexes the Markdown (fences of any length, ``~~~``, blocks inside lists and quotes); the kind is declared
by an HTML comment on the nearest non-blank line above the fence, invisible on GitHub::

    <!-- docs: KIND [option=value ...] [flag ...] -->

``run``      executed for real in a shell set up as the README says (or as a Python script): every command
             must exit 0; ``cmd &`` runs in the background until the block ends (waited for on its ports).
             Options: ``needs=serve|drift|version-2`` (started before the block, stopped after: ``make
             serve``, ``make drift``, a second registered version), ``ports=P,Q`` (the ports of a background
             command that names none, e.g. a default), ``path=/mnt/models:champion-dir`` (a path the block
             names, stood in for by a fixture), flag ``servers`` (each command either exits 0 or serves:
             ready on its ports, then stopped).
``cluster``  needs a Kubernetes cluster: run against an unreachable one, with kubectl and helm replaced
             by their offline forms (tests/docs/offline_cluster.py); ``file=NAME`` writes the block to NAME
             (a values file) for a later cluster block of the same document, which must use it.
``covered``  long-running: ``by=tests/test_x.py,.ci/run`` names what runs it in CI (each must exist and
             name the block's commands).
``output``   a sample of output: ``of=module.function`` names the code that prints it, checked against it.
``diagram``  a picture (inferred for ``mermaid`` and for unlabelled fences drawn with box characters).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sybil import Document, Region
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer
from sybil.typing import Evaluator

ROOT = Path(__file__).resolve().parents[2]
KINDS = {  # kind -> the options and flags it takes
    "run": ({"needs", "ports", "path"}, {"servers"}),
    "cluster": ({"file"}, set()),
    "covered": ({"by"}, set()),
    "output": ({"of"}, set()),
    "diagram": (set(), set()),
}
MARKER = re.compile(r"^\s*<!--\s*docs:\s*(?P<spec>.*?)\s*-->\s*$")
FENCES = RawFencedCodeBlockLexer(info_pattern=re.compile(r"(?P<info>[^\n]*)$\n", re.MULTILINE))
BOX = re.compile(r"[─│►◄▼▲┌┐└┘├┤]")
HOW_TO_MARK = (
    "put a marker on the line above the fence: <!-- docs: run --> (executed as written), "
    "<!-- docs: cluster --> (needs a cluster: dry-run offline), <!-- docs: covered by=tests/test_x.py --> "
    "(long-running, run by that test), <!-- docs: output of=module.function --> (sample output of that code) "
    "or <!-- docs: diagram -->; options: tests/docs/doc_blocks.py"
)


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its text, and the kind it is tested as."""

    path: Path  # relative to ROOT
    line: int  # of the opening fence, 1-based
    language: str
    source: str
    kind: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    problem: str = ""  # why the block cannot be tested (no kind, a bad marker): the test fails with it

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def option_list(self, name: str) -> list[str]:
        return [v for v in self.options.get(name, "").split(",") if v]


def documents(root: Path = ROOT) -> list[Path]:
    """Every Markdown file of the project (not environments, state or tests), relative to ``root``."""
    skip = {"tests", "node_modules"}
    found = []
    for path in root.rglob("*.md"):
        parts = path.relative_to(root).parts
        if any(p.startswith(".") or p in skip or p.endswith(".egg-info") for p in parts[:-1]):
            continue
        found.append(path.relative_to(root))
    return sorted(found)


def marker(text: str, fence_start: int) -> str | None:
    """The ``docs:`` spec on the nearest non-blank line above a fence, if that line is a marker."""
    for line in reversed(text[:fence_start].splitlines()):
        if line.strip():
            match = MARKER.match(line)
            return match["spec"] if match else None
    return None


def classify(block: Block, spec: str | None) -> Block:
    """The block with its kind and options from the marker, or inferred, or the problem."""
    if spec is None:
        if block.language == "mermaid" or (not block.language and BOX.search(block.source)):
            return Block(**{**block.__dict__, "kind": "diagram"})
        what = f"a ```{block.language}" if block.language else "an unlabelled ```"
        problem = f"{block.where}: {what} block has no kind: {HOW_TO_MARK}"
        return Block(**{**block.__dict__, "problem": problem})
    kind, *words = spec.split()
    if kind not in KINDS:
        return Block(**{**block.__dict__, "problem": f"{block.where}: unknown kind {kind!r}: {HOW_TO_MARK}"})
    allowed_options, allowed_flags = KINDS[kind]
    options = dict(w.split("=", 1) for w in words if "=" in w)
    flags = frozenset(w for w in words if "=" not in w)
    bad = sorted(set(options) - allowed_options) + sorted(flags - allowed_flags)
    problem = f"{block.where}: {kind} takes no {', '.join(bad)} (see tests/docs/doc_blocks.py)" if bad else ""
    return Block(**{**block.__dict__, "kind": kind, "options": options, "flags": flags, "problem": problem})


def lex(document: Document, evaluator: Evaluator | None = None) -> Iterator[Region]:
    """Sybil parser: one region per fenced block, its ``parsed`` the :class:`Block`."""
    path = Path(document.path)
    for region in FENCES(document):
        line = document.text.count("\n", 0, region.start) + 1
        info = region.lexemes["info"].strip()
        block = Block(path, line, info.split()[0] if info else "", str(region.lexemes["source"]))
        region.parsed = classify(block, marker(document.text, region.start))
        region.evaluator = evaluator
        yield region


def parse(path: Path, root: Path = ROOT, evaluator: Evaluator | None = None) -> Document:
    """The Sybil document of one Markdown file (its path relative to ``root``)."""
    document = Document((root / path).read_text(), str(path))
    for region in lex(document, evaluator):
        document.add(region)
    return document


def blocks(root: Path = ROOT) -> list[Block]:
    """Every fenced block of every document, in document order."""
    return [example.parsed for path in documents(root) for example in parse(path, root)]
