"""The docs harness: an unmarked block fails with how to mark it, and a broken command fails its block."""

from __future__ import annotations

from pathlib import Path

import pytest

from docs.doc_blocks import HOW_TO_MARK, blocks
from docs.doc_kinds import evaluate
from docs.doc_shell import split
from docs.doc_workspace import Workspace, bindable
from relearn.demo.stack import free_port


def _blocks(tmp_path: Path, markdown: str):
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "README.md").write_text(markdown)
    return blocks(tmp_path / "docs")


def test_a_block_without_a_kind_fails_and_says_how_to_mark_it(tmp_path: Path) -> None:
    found = _blocks(tmp_path, "# t\n\n```bash\nmake demo\n```\n\n<!-- docs: nonsense -->\n```\nx\n```\n")
    assert [b.problem.split(": ", 1)[0] for b in found] == ["README.md:3", "README.md:8"]
    assert found[0].problem.endswith(f"a ```bash block has no kind: {HOW_TO_MARK}")
    assert "<!-- docs: run -->" in found[0].problem
    assert "unknown kind 'nonsense'" in found[1].problem
    with pytest.raises(AssertionError, match="has no kind"):
        evaluate(found[0], None)


def test_kinds_are_read_from_the_marker_above_or_inferred_for_pictures(tmp_path: Path) -> None:
    markdown = (
        "<!-- docs: run needs=serve ports=8084,8085 servers -->\n\n```bash\nx\n```\n"
        "```mermaid\nflowchart LR\n```\n```\n a ─► b\n```\n<!-- docs: output bad=1 -->\n```\ny\n```\n"
    )
    run, mermaid, picture, output = _blocks(tmp_path, markdown)
    assert (run.kind, run.option_list("ports"), run.flags) == ("run", ["8084", "8085"], {"servers"})
    assert not run.problem
    assert (mermaid.kind, picture.kind) == ("diagram", "diagram")
    assert "output takes no bad" in output.problem


def test_commands_are_split_as_bash_reads_them() -> None:
    source = (
        "a --x \\\n  --y 'two\nlines' # comment\n"
        'p="$(openssl rand | tr -dc A-Z)"  # "not a quote\n'
        "server --http-port 1 --grpc-port 2 &   # in the background\n# only a comment\n"
    )
    commands = split(source)
    assert [c.text for c in commands] == [
        "a --x \\\n  --y 'two\nlines'",
        'p="$(openssl rand | tr -dc A-Z)"',
        "server --http-port 1 --grpc-port 2",
    ]
    assert [c.background for c in commands] == [False, False, True]
    assert commands[2].ports([9]) == [1, 2] and commands[0].ports([9]) == [9]


@pytest.mark.parametrize(
    ("kind", "command", "error"),
    [
        ("run", "python -m relearn.no_such_module --help", "exited 1"),
        ("run", "python -m relearn.serving.predictor --no-such-flag", "exited 2"),
        ("run", "python -c 'raise SystemExit(3)' --http-port 1 &", r"exited \(in the background\)"),
        ("run servers ports=1", "python -c 'raise SystemExit(4)'", "exited 4"),
        ("cluster", "kubectl -n relearn get pods --no-such-flag", "unknown flag"),
        ("cluster", "kubectl apply -f manifests/no-such-file.yaml", "does not exist"),
        ("cluster", "helm install relearn charts/relearn -f no-such-values.yaml", "exited 1 offline"),
        ("cluster", "helm test relearn --filter name=relearn-test-nothing", "no `helm install relearn"),
    ],
)
def test_a_broken_command_fails_its_block(tmp_path: Path, kind: str, command: str, error: str) -> None:
    """Commands that cannot work as written fail, wherever they fail: module, flag, file, release."""
    (block,) = _blocks(tmp_path, f"<!-- docs: {kind} -->\n```bash\n{command}\n```\n")
    (tmp_path / "home").mkdir()
    with pytest.raises(AssertionError, match=error):
        evaluate(block, Workspace(tmp_path / "ws", tmp_path / "home", [block]))


def test_servers_are_waited_for_on_their_ports_and_stopped(tmp_path: Path) -> None:
    """A background server and a foreground one: each serves, the block passes, nothing is left running."""
    one, two = free_port(), free_port()
    serve, curl = "python -m http.server --bind 127.0.0.1", "curl -s 127.0.0.1"
    (background, foreground) = _blocks(
        tmp_path,
        f"<!-- docs: run ports={one} -->\n```bash\n{serve} {one} &\n{curl}:{one}/ >/dev/null\n```\n"
        f"<!-- docs: run servers ports={two} -->\n```bash\n{serve} {two}\n```\n",
    )
    (tmp_path / "home").mkdir()
    workspace = Workspace(tmp_path / "ws", tmp_path / "home", [background, foreground])
    assert [evaluate(b, workspace) for b in (background, foreground)] == ["run", "run"]
    assert bindable(one) and bindable(two)
