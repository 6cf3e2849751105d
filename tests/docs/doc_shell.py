"""Run a shell block as a user would type it: one bash, command by command, each command's status and output
kept apart; ``cmd &`` in the background until the block ends, waited for on its ports; every process the
block started is stopped afterwards (the block's bash leads a session of its own: all of it).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

READY_SECONDS = 150  # a predictor on a loaded 2-core machine takes 10-30 s to listen
PORT_FLAG = re.compile(r"--[\w-]*port[= ](\d+)")


@dataclass
class Command:
    """One command of a block: its text without comments, whether it runs in the background, its ports."""

    text: str
    background: bool = False

    def ports(self, default: list[int]) -> list[int]:
        return [int(p) for p in PORT_FLAG.findall(self.text)] or default


def split(source: str) -> list[Command]:
    """The block's commands: a newline outside quotes, ``$(...)`` and a ``\\`` continuation ends one."""
    commands, current, quote, depth, i = [], [], "", 0, 0
    while i < len(source):
        c = source[i]
        if quote == "'":
            quote = "" if c == "'" else quote
        elif c == "\\":
            current.append(source[i : i + 2])
            i += 2
            continue
        elif quote == '"' and c == '"' and depth == 0:
            quote = ""
        elif c == "$" and source[i + 1 : i + 2] == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not quote and c in "'\"" and not (depth and c == '"'):
            quote = c
        elif not quote and not depth and c == "#" and (not current or current[-1][-1:] in " \t\n"):
            while i < len(source) and source[i] != "\n":  # a comment, to the end of the line
                i += 1
            continue
        if c == "\n" and not quote and not depth:
            commands.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    commands.append("".join(current))
    found = []
    for text in (t.strip() for t in commands):
        if text:
            background = text.endswith("&") and not text.endswith("&&")
            found.append(Command(text[:-1].rstrip() if background else text, background))
    return found


PRELUDE = r"""
__docs_status() { echo "$* $(date +%s.%N)" >>"$DOCS_OUT/status"; }  # N what [value], and when
__docs_ready() {  # PID PORT...: 0 once every port accepts, 1 if PID exited first, 2 after READY seconds
  local pid=$1 deadline=$((SECONDS + READY)) port; shift
  for port; do
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
      kill -0 "$pid" 2>/dev/null || return 1
      ((SECONDS < deadline)) || return 2
      sleep 0.2
    done
  done
}
"""


def script(commands: list[Command], prelude: str, default_ports: list[int]) -> str:
    """One bash for the block, writing ``status`` lines and ``out.N`` files to $DOCS_OUT. Background
    commands start at once and are waited for (their ports) before the next foreground command runs."""
    lines, pending = [PRELUDE.replace("READY", str(READY_SECONDS)), prelude], []
    for n, command in enumerate([*commands, None]):
        if command is None or not command.background:
            for m, ports in pending:
                lines.append(f"__docs_ready $__pid{m} {ports}; __docs_status {m} ready $?")
            pending = []
        if command is None:
            break
        lines.append(
            f'{{ {command.text}\n}} >"$DOCS_OUT/out.{n}" 2>&1' + (" &" if command.background else "")
        )
        if command.background:
            lines.append(f"__pid{n}=$!; __docs_status {n} pid $!")
            pending.append((n, " ".join(map(str, command.ports(default_ports)))))
        else:
            lines.append(f"__docs_status {n} exit $?")
    return "\n".join(lines) + "\n"


@dataclass
class Outcome:
    """What one command did: its exit code, a background command's readiness (0 ready, 1 exited, 2 timed
    out), whether a server served."""

    command: Command
    output: str = ""
    exit: int | None = None
    ready: int | None = None
    serving: bool = False
    pid: int | None = None


def run(
    commands: list[Command], prelude: str, cwd: Path, env: dict[str, str], out: Path, ports: list[int]
) -> list[Outcome]:
    """Run the block in one bash; stop everything it started; the outcome of each command that ran."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "block.sh").write_text(script(commands, prelude, ports))
    with (out / "bash.log").open("w") as log:
        bash = subprocess.Popen(
            ["bash", str(out / "block.sh")], cwd=cwd, env={**env, "DOCS_OUT": str(out)},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    with contextlib.suppress(subprocess.TimeoutExpired):
        bash.wait(timeout=READY_SECONDS * 2)
    outcomes = _outcomes(commands, out)
    for o in outcomes:
        if o.ready == 0 and not _alive(o.pid):
            o.ready = 1  # it came up, and had exited when the block ended
    stop_session(bash.pid)
    bash.wait(timeout=30)
    return outcomes


def serve_each(
    commands: list[Command], prelude: str, cwd: Path, env: dict[str, str], out: Path, ports: list[int]
) -> list[Outcome]:
    """Each command on its own: it exits by itself, or it serves (its ports accept) and is then stopped."""
    out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for n, command in enumerate(commands):
        outcome, deadline = Outcome(command), time.monotonic() + READY_SECONDS
        with (out / f"out.{n}").open("w") as log:
            process = subprocess.Popen(
                ["bash", "-c", f"{prelude}\n{command.text}"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        while (code := process.poll()) is None and time.monotonic() < deadline:
            if all(_listening(p) for p in command.ports(ports)):
                outcome.serving = True
                break
            time.sleep(0.2)
        outcome.exit, outcome.ready = code, None if code is not None or outcome.serving else 2
        stop_session(process.pid)
        process.wait(timeout=30)
        outcome.output = read(out / f"out.{n}")
        outcomes.append(outcome)
    return outcomes


def _outcomes(commands: list[Command], out: Path) -> list[Outcome]:
    status = (out / "status").read_text().splitlines() if (out / "status").exists() else []
    outcomes: dict[int, Outcome] = {}
    for line in status:
        n, what, value, _ = line.split()  # the last field is the time
        setattr(outcomes.setdefault(int(n), Outcome(commands[int(n)])), what, int(value))
    for n, o in outcomes.items():
        o.output = read(out / f"out.{n}")
    return [outcomes[n] for n in sorted(outcomes)]


def stop_session(sid: int, grace: float = 3.0) -> None:
    """SIGTERM every process of the session ``sid`` (a block's shell and all it started), SIGKILL what is
    left after ``grace`` seconds (a KServe server takes ~8 s to exit: not what the docs test)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in session_members(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not session_members(sid):
            return


def session_members(sid: int) -> list[int]:
    """Live processes (not zombies) whose session is ``sid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            members.append(int(entry.name))
    return members


def _alive(pid: int | None) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
