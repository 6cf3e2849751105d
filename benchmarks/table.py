"""One benchmark result per row, printed as an aligned plain-text table or written as JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

COLUMNS = ("benchmark", "size", "time", "throughput", "ratio", "aim", "met")


@dataclass
class Row:
    """A measurement; ``ok`` is None where there is no aim, else whether the aim was met."""

    what: str
    size: str = ""
    seconds: float | None = None
    throughput: str = ""
    ratio: str = ""
    aim: str = ""
    ok: bool | None = None
    value: float | None = None  # the throughput (or peak bytes) as a number, for the JSON file

    def cells(self) -> tuple[str, ...]:
        seconds = "" if self.seconds is None else f"{self.seconds:.2f} s"
        met = {None: "", True: "pass", False: "MISS"}[self.ok]
        return (self.what, self.size, seconds, self.throughput, self.ratio, self.aim, met)


def human(number: float) -> str:
    """1234567 → '1.23M', 12345 → '12.3k'."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= limit:
            return f"{number / limit:.3g}{suffix}"
    return f"{number:.3g}"


def render(rows: list[Row]) -> str:
    """The rows as a table with aligned columns (numbers right-aligned)."""
    lines = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    right = {1, 2, 3}

    def fmt(line: tuple[str, ...]) -> str:
        cells = (
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(lines[0]), rule, *map(fmt, lines[1:])])


def write_json(rows: list[Row], path: Path, meta: dict[str, object]) -> None:
    """Writes ``{"meta": ..., "rows": [...]}`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": [asdict(row) for row in rows]}, indent=2) + "\n")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (from /proc/<pid>/stat, clock ticks)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


def metric_sum(base_url: str, name: str) -> float:
    """The sum of one metric's samples over its label sets, read from ``<base_url>/metrics``."""
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.split("{", 1)[0].split(" ", 1)[0] == name
    )
