"""How each kind of block is tested (the kinds are described in tests/docs/doc_blocks.py).

Every evaluator raises AssertionError with the block's place, the command and its output when the block
does not work as written; it returns the label the summary line counts it under.
"""

from __future__ import annotations

import json
import re
import subprocess

import docs.doc_shell as shell
from docs.doc_blocks import ROOT, Block
from docs.doc_workspace import PRELUDE, Workspace

LABELS = {"run": "run", "cluster": "dry-run", "covered": "covered by tests", "output": "output",
          "diagram": "diagram"}  # fmt: skip
RESOLVE_FAILED = re.compile(r"Name or service not known|Temporary failure in name resolution")
RESULTS: dict[str, str] = {}  # block -> the label it was tested under, "failed" until it passed


def evaluator(example) -> None:
    """Sybil's evaluator: the block is the example's ``parsed``, the workspace is in its namespace."""
    block = example.parsed
    RESULTS[block.where] = "failed"
    RESULTS[block.where] = evaluate(block, example.namespace["workspace"])


def evaluate(block: Block, workspace: Workspace) -> str:
    """Test one block; the summary label it counts under."""
    assert not block.problem, block.problem
    EVALUATORS[block.kind](block, workspace)
    return LABELS[block.kind]


def _commands(block: Block, workspace: Workspace) -> list[shell.Command]:
    if block.language == "python":
        script = workspace.tmp / f"block-{block.path.stem}-{block.line}.py"
        script.write_text(block.source)
        return [shell.Command(f"python {script}")]
    assert block.language in ("bash", "sh", "shell"), f"{block.where}: cannot run a ```{block.language} block"
    source = block.source
    for mapping in block.option_list("path"):  # a path the block names, stood in for by a fixture
        path, fixture = mapping.split(":", 1)
        assert fixture == "champion-dir", f"{block.where}: unknown fixture {fixture!r} for {path}"
        source = source.replace(path, str(workspace.champion_download()))
    return shell.split(source)


def _execute(block: Block, workspace: Workspace, commands: list[shell.Command]) -> list[shell.Outcome]:
    marked = [int(p) for p in block.option_list("ports")]
    out = workspace.tmp / "out" / f"{block.path.as_posix().replace('/', '_')}-{block.line}"
    execute = shell.serve_each if "servers" in block.flags else shell.run
    outcomes = execute(commands, PRELUDE, workspace.clone, workspace.env(block.kind), out, marked)
    for o in outcomes:  # the outputs, shown by pytest when the block fails
        print(f"$ {o.command.text}\n{o.output}")
    if len(outcomes) < len(commands):
        missing, log = commands[len(outcomes)].text, shell.read(out / "bash.log")[-2000:]
        raise AssertionError(f"{block.where}: `{missing}` never ran: {log}")
    return outcomes


def _failed(block: Block, o: shell.Outcome, what: str) -> AssertionError:
    return AssertionError(f"{block.where}: `{o.command.text}` {what}:\n{o.output[-3000:]}")


def run(block: Block, workspace: Workspace) -> None:
    """Executed for real; background commands must come up on their ports and still run at the end."""
    commands, servers = _commands(block, workspace), "servers" in block.flags
    marked = [int(p) for p in block.option_list("ports")]
    serving = [c for c in commands if c.background or servers]
    for c in serving:
        assert c.ports(marked), f"{block.where}: `{c.text}` serves on ports it does not name: add ports="
    ports = workspace.ports_of(block.option_list("needs")) + [p for c in serving for p in c.ports(marked)]
    workspace.wait_free(sorted(set(ports)), block.where)
    with workspace.needs(block):
        outcomes = _execute(block, workspace, commands)
    for o in outcomes:
        if o.exit not in (None, 0):
            raise _failed(block, o, f"exited {o.exit}")
        if o.command.background and o.ready != 0:
            what = {1: "exited", 2: f"did not open {o.command.ports(marked)}"}.get(o.ready, "failed")
            raise _failed(block, o, f"{what} (in the background)")
        if servers and not (o.serving or o.exit == 0):
            raise _failed(block, o, f"did not serve on {o.command.ports(marked)} in {shell.READY_SECONDS} s")


def cluster(block: Block, workspace: Workspace) -> None:
    """kubectl and helm through their offline forms; anything else must succeed, or fail only because a
    cluster-local name (``*.svc.cluster.local``) does not resolve here."""
    if name := block.options.get("file"):
        same = [b for b in workspace.blocks if b.path == block.path and b.kind == "cluster"]
        users = [b for b in same if name in b.source and b is not block]
        assert users, f"{block.where}: file={name}, but no cluster block of {block.path} uses {name}"
        return  # written when the workspace is made, rendered by the block that uses it
    for o in _execute(block, workspace, _commands(block, workspace)):
        tool = o.command.text.split()[0]
        in_cluster = ".svc.cluster.local" in o.command.text and RESOLVE_FAILED.search(o.output)
        if o.exit != 0 and not (tool not in ("kubectl", "helm") and in_cluster):
            raise _failed(block, o, f"exited {o.exit} offline")


def covered(block: Block, workspace: Workspace) -> None:
    """Run in CI by the tests it names: they exist and name its commands; each make target exists."""
    by = block.option_list("by")
    assert by, f"{block.where}: covered needs by=<the tests that run it>"
    texts = {}
    for name in by:
        path = ROOT / name
        assert path.is_file(), f"{block.where}: {name} does not exist"
        texts[name] = path.read_text()
        if path.suffix == ".py":
            assert re.search(r"^def test_", texts[name], re.M), f"{block.where}: {name} has no test"
    for command in shell.split(block.source):
        assert any(command.text in text for text in texts.values()), (
            f"{block.where}: none of {by} names `{command.text}`"
        )
        if command.text.startswith("make "):
            done = subprocess.run(["make", "-n", *command.text.split()[1:]], cwd=ROOT, capture_output=True)
            assert done.returncode == 0, f"{block.where}: `{command.text}`: {done.stderr.decode()}"


def output(block: Block, workspace: Workspace) -> None:
    """A sample of output: the code ``of=`` names must print it that way."""
    of = block.options.get("of", "")
    assert of in CHECKERS, f"{block.where}: no check for of={of!r}: add one to CHECKERS in {__file__}"
    CHECKERS[of](block)


def diagram(block: Block, workspace: Workspace) -> None:
    """Pictures are not executed."""


# ------------------------------------------------------------------------------------------ output checks
def demo_table(block: Block) -> None:
    """The demo's summary table, rendered by relearn.demo.report.terminal_table from the sample's numbers:
    each sample line must be a line it prints (the sample may leave out lines and trailing '; ...' parts).
    Sybil dedents the block: the table's own two-space margin is compared without it."""
    from relearn.demo.report import terminal_table

    sample = [line.rstrip() for line in block.source.splitlines() if line.strip()]
    quality, milestones, totals = {}, {}, {}
    for line in sample:
        if m := re.match(r"^(\s*\S.*?)\s+([\d,]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", line):
            name, n, fraud, *metrics = m.groups()
            scores = dict(zip(("precision", "recall", "pr_auc"), map(float, metrics), strict=True))
            quality[name] = {"n": int(n.replace(",", "")), "fraud": int(fraud), **scores}
        elif m := re.match(r"^(\S+)\s+([\d.]+) s   stream time ?(.*)$", line):
            milestones[m[1]] = {"t_seconds": float(m[2]), "sim": m[3].replace(" ", "T") or None}
        elif m := re.match(r"^requests ([\d,]+), failed (\d+); champion v(\S+) → v(\S+)", line):
            totals = {"requests": int(m[1].replace(",", "")), "failed": int(m[2]),
                      "champion_before": m[3], "champion_after": m[4]}  # fmt: skip
    assert quality and milestones and totals, f"{block.where}: not the demo's summary table"
    summary = {"scenario": "concept_drift", "quality": quality, "milestones": milestones, **totals,
               "drift_windows": 0, "windows": 0}  # fmt: skip
    printed = [line.rstrip().removeprefix("  ") for line in terminal_table(summary).splitlines()]
    for line in sample:
        assert any(p == line or p.startswith(line + ";") for p in printed), (
            f"{block.where}: terminal_table prints no line like\n{line!r}; it prints:\n" + "\n".join(printed)
        )


def check_line(block: Block) -> None:
    """A failed check's JSON line: the fields relearn.checks.Result.line prints, in its order."""
    from relearn.checks import CHECKS, Result

    sample = json.loads(block.source)
    fields = json.loads(Result(sample["check"], False, "u", hint="h").line())
    assert list(sample) == list(fields), f"{block.where}: fields {list(sample)}; the code's: {list(fields)}"
    assert sample["check"] in CHECKS, f"{block.where}: no check {sample['check']!r}"


CHECKERS = {
    "relearn.demo.report.terminal_table": demo_table,
    "relearn.checks.Result.line": check_line,
}


EVALUATORS = {"run": run, "cluster": cluster, "covered": covered, "output": output, "diagram": diagram}
