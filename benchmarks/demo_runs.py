"""``make demo`` in N fresh clones in a row: exit code, wall time and the loop's outcome of each run.

The main command must exit 0 whenever the loop succeeded, every time (issue 17). Each run clones the
repository's HEAD into a new folder and runs ``make demo`` there, as a new user would. ``--venv`` shares
one set of environments between the runs (the clone's ``.venv`` is a link to it and make is told not to
rebuild it); without it every clone builds its own (``make setup``'s cost, ~2-3 min, once per run).

``--scenarios`` runs a series instead: every scenario with every seed of ``--seeds`` (issue 21), and checks
that each run chose its scenario's documented response (``EXPECTED``) and ended the way it should.

    python -m benchmarks.demo_runs --runs 5 --venv .venv
    python -m benchmarks.demo_runs --venv .venv --scenarios all --seeds 7,11,13 --parallel 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The documented response per scenario (docs/guide/continual-learning.md) and whether the champion changes.
EXPECTED = {
    "concept_drift": ("retrain", True),
    "covariate_shift": ("retrain", True),
    "label_shift": ("recalibrate", True),
    "data_bug_units": ("page", False),
    "data_bug_nulls": ("page", False),
}


def one_run(index: int | str, where: Path, venv: Path | None, timeout_s: float, args: str, rev: str) -> dict:
    """Clone at ``rev``, ``make demo``, read the report; the clone is removed unless the run failed."""
    clone = where / f"run-{index}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", rev], check=True)
    make = ["make", "demo"]
    if venv is not None:
        (clone / ".venv").symlink_to(venv.resolve())
        make += ["-o", ".venv/platform/.ready", "-o", ".venv/drift/.ready"]  # shared: never rebuilt here
    if args:
        make.append(f"ARGS={args}")
    env = dict(os.environ)
    if venv is not None:  # its editable install points at this checkout: the clone's code goes first
        env["PYTHONPATH"] = os.pathsep.join([str(clone / "src"), str(clone)])
    log = where / f"run-{index}.log"
    begin = time.monotonic()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                make, cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = time.monotonic() - begin
    report = clone / ".relearn" / "demo" / "report"
    summary = json.loads((report / "summary.json").read_text()) if (report / "summary.json").exists() else {}
    row = {"run": index, "exit": code, "seconds": round(seconds, 1), "log": str(log), **_outcome(summary)}
    row["promoted_by"] = promoted_by(report / "events.json", summary.get("champion_after"))
    if report.exists():  # kept beside the log: the clone goes, the evidence stays
        shutil.copytree(report, where / f"run-{index}-report", dirs_exist_ok=True)
    if code == 0:
        shutil.rmtree(clone, ignore_errors=True)
    return row


def _outcome(summary: dict) -> dict:
    """The few facts that say whether the loop succeeded, from the demo's summary.json."""
    chosen = [r["response"] for r in summary.get("responses") or []]
    before, after = summary.get("champion_before", "?"), summary.get("champion_after", "?")
    return {
        "responses": list(dict.fromkeys(chosen)),  # in order, once each
        "champion": f"{before} -> {after}",
        "champion_changed": before != after,
        "promoted": "promoted" in (summary.get("milestones") or {}),
        "requests": summary.get("requests"),
        "failed": summary.get("failed"),
        "refused": summary.get("refused"),
    }


def promoted_by(events: Path, version: object) -> str | None:
    """The response (retrain, recalibrate) whose run made ``version``, from the report's timeline."""
    if not events.exists():
        return None
    made, response = {}, None
    for event in json.loads(events.read_text()).get("timeline", []):
        if event["kind"] == "retrain-start":
            response = event.get("response")
        elif event["kind"] == "retrain-end":
            made[str(event.get("version"))] = response
    return made.get(str(version))


def as_documented(row: dict) -> bool:
    """Exit 0, the scenario's response first, the champion changed exactly when it should, and a new
    champion came from that response (a concept-drift run that ends on a recalibrated champion does not)."""
    response, changes = EXPECTED[row["scenario"]]
    by = row.get("promoted_by", response) if changes else response
    return (
        row["exit"] == 0
        and row["responses"][:1] == [response]
        and row["champion_changed"] == changes
        and by == response
    )


def series(ns: argparse.Namespace, where: Path, rev: str) -> int:
    """Every scenario x seed, ``--parallel`` at a time; a table of the response each run chose."""
    names = list(EXPECTED) if ns.scenarios == "all" else ns.scenarios.split(",")
    plan = [(name, int(seed)) for name in names for seed in ns.seeds.split(",")]
    print(f"make demo over {len(plan)} scenario x seed runs at {rev[:10]} under {where}", flush=True)

    def run(item: tuple[str, int]) -> dict:
        name, seed = item
        args = f"--scenario {name} --seed {seed} --no-progress {ns.args}".strip()
        row = one_run(f"{name}-{seed}", where, ns.venv, ns.timeout_minutes * 60, args, rev)
        row.update(scenario=name, seed=seed)
        row["documented"] = as_documented(row)
        print(f"  {name:16} seed {seed:3}: exit {row['exit']}  {row['seconds'] / 60:5.1f} min  "
              f"responses {','.join(row['responses']) or '-':22} champion {row['champion']:8} "
              f"failed {row['failed']}  {'as documented' if row['documented'] else 'NOT as documented'}",
              flush=True)  # fmt: skip
        return row

    with ThreadPoolExecutor(max_workers=ns.parallel) as pool:
        rows = list(pool.map(run, plan))
    print("\n| scenario | seed | exit | minutes | responses | champion | failed | as documented |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['seed']} | {r['exit']} | {r['seconds'] / 60:.1f} | "
              f"{', '.join(r['responses']) or '-'} | {r['champion']} | {r['failed']} | "
              f"{'yes' if r['documented'] else 'NO'} |")  # fmt: skip
    ok = sum(r["documented"] for r in rows)
    print(f"\n{ok}/{len(rows)} runs chose their scenario's documented response and exited 0")
    if ns.json:
        ns.json.write_text(json.dumps(rows, indent=2))
    return 0 if ok == len(rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.demo_runs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=5, help="How many fresh clones, one after another (5).")
    parser.add_argument(
        "--venv", type=Path, help="Share these environments (default: each clone builds its own)."
    )
    parser.add_argument(
        "--where", type=Path, help="Folder of the clones and logs (default: a new temp folder)."
    )
    parser.add_argument("--timeout-minutes", type=float, default=40.0, help="Give up on a run after (40).")
    parser.add_argument("--args", default="", help="ARGS passed to make demo, e.g. '--seed 11'.")
    parser.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    parser.add_argument("--rev", default="HEAD", help="Commit every run clones (HEAD as at the start).")
    parser.add_argument("--scenarios", help="Run a series: these scenarios (comma-separated, or all).")
    parser.add_argument("--seeds", default="7,11,13", help="Seeds of each scenario in a series (7,11,13).")
    parser.add_argument("--parallel", type=int, default=1, help="Runs of a series at once (1).")
    ns = parser.parse_args(argv)
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", ns.rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    where = ns.where or Path(tempfile.mkdtemp(prefix="relearn-demo-runs-"))
    where.mkdir(parents=True, exist_ok=True)
    if ns.scenarios:
        return series(ns, where, rev)
    print(f"make demo x {ns.runs} in fresh clones of {ROOT} at {rev[:10]} under {where}", flush=True)
    rows = []
    for i in range(1, ns.runs + 1):
        rows.append(one_run(i, where, ns.venv, ns.timeout_minutes * 60, ns.args, rev))
        r = rows[-1]
        print(f"  run {i}: exit {r['exit']}  {r['seconds'] / 60:5.1f} min  champion {r['champion']}  "
              f"requests {r['requests']}  failed {r['failed']}", flush=True)  # fmt: skip
    ok = sum(r["exit"] == 0 for r in rows)
    minutes = ", ".join(f"{r['seconds'] / 60:.1f}" for r in rows)
    print(f"{ok}/{len(rows)} runs exited 0; minutes: {minutes}")
    if ns.json:
        ns.json.write_text(json.dumps(rows, indent=2))
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
