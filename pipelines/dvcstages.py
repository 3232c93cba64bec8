"""Talking to DVC and the ``facekd`` command as subprocesses, with output streamed line by line.

Nothing here knows about Prefect: callers pass a ``on_line`` callback (the Prefect run logger's
``info``) so the same helpers work in flows, tests and plain scripts. Children get this
environment's ``bin`` first on PATH so the ``python``/``facekd`` commands inside ``dvc.yaml`` run
in the same interpreter as the flow.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from facekd.config import ScheduleParams
from facekd.errors import ConfigError, FacekdError

TAIL_LINES = 30
# Held by a reproducing flow for its whole run (see pipeline_lock); under .dvc/tmp, which git ignores.
FLOW_LOCK = Path(".dvc/tmp/facekd-flow.lock")
# What DVC prints when another DVC process is at work in the same repository: the repository lock
# (held while DVC checks the pipeline) or a stage's deps/outs lock (held while a stage runs).
DVC_BUSY = ("Unable to acquire lock", "is busy, it is being blocked by")
# `dvc dag --dot` lines: a node `"name";` or an edge `"upstream" -> "downstream";`.
_DOT_NODE = re.compile(r'^\s*"(?P<node>[^"]+)";\s*$')
_DOT_EDGE = re.compile(r'^\s*"(?P<src>[^"]+)"\s*->\s*"(?P<dst>[^"]+)";\s*$')


class CommandFailed(FacekdError):
    """A DVC stage or facekd command exited non-zero; the message carries its last output lines."""


@dataclass(frozen=True)
class CommandResult:
    """Exit status and the last lines a finished child wrote (stdout and stderr interleaved)."""

    returncode: int
    tail: tuple[str, ...]


def venv_bin() -> Path:
    """The ``bin`` folder of the interpreter running the flow (where dvc and facekd live)."""
    return Path(sys.executable).parent


def child_env() -> dict[str, str]:
    """This process's environment with the venv's bin first on PATH and unbuffered Python.

    PYTHONUNBUFFERED makes Python stages flush each line, so output reaches the log as it is
    written rather than in one block when the stage ends.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(venv_bin()), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def dvc_command(*args: str) -> list[str]:
    """``dvc <args>`` run by this interpreter (no reliance on whichever dvc is on PATH)."""
    return [sys.executable, "-m", "dvc", *args]


def facekd_command(*args: str) -> list[str]:
    """``facekd <args>`` from this environment's console script (``python -m facekd`` if absent)."""
    script = venv_bin() / "facekd"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "facekd", *args]


def run_streaming(cmd: Sequence[str], cwd: Path, on_line: Callable[[str], object],
                  tail_lines: int = TAIL_LINES) -> CommandResult:
    """Run ``cmd`` in ``cwd``, handing each output line to ``on_line`` as soon as it is written."""
    tail: deque[str] = deque(maxlen=tail_lines)
    with subprocess.Popen(list(cmd), cwd=cwd, env=child_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                          errors="replace", bufsize=1) as proc:
        assert proc.stdout is not None  # stdout=PIPE above
        for raw in proc.stdout:
            line = raw.rstrip("\r\n")
            tail.append(line)
            on_line(line)
        returncode = proc.wait()
    return CommandResult(returncode, tuple(tail))


def run_checked(cmd: Sequence[str], cwd: Path, on_line: Callable[[str], object],
                what: str) -> None:
    """:func:`run_streaming`, raising :class:`CommandFailed` with the output tail on failure."""
    result = run_streaming(cmd, cwd, on_line)
    busy = [line.strip() for line in result.tail if any(marker in line for marker in DVC_BUSY)]
    if result.returncode != 0 and busy:
        raise CommandFailed(
            f"pipeline busy: another `dvc repro` (or other DVC command) is running in {cwd}, so {what} did "
            f"not start. Wait for it to finish and run again. (DVC: {busy[0]})")
    if result.returncode != 0:
        tail = "\n".join(result.tail) or "(no output)"
        raise CommandFailed(
            f"{what} failed with exit code {result.returncode} in {cwd} (command: "
            f"{' '.join(cmd)}). Last {len(result.tail)} output lines:\n{tail}")


@contextlib.contextmanager
def pipeline_lock(repo: Path) -> Iterator[None]:
    """Exclusive, non-blocking lock of ``repo`` for one reproducing flow.

    DVC locks the repository only while it checks the pipeline and each stage's paths while the
    stage runs, so two flows started together interleave their ``dvc repro <stage>`` calls and
    either one can hit "'data/eval' is busy" halfway. Taking this lock first makes the second flow
    fail at once, before any stage, and the first one run undisturbed. ``flock`` is released by
    the kernel when the holder dies, so a killed flow never leaves a stale lock.
    """
    path = repo / FLOW_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise CommandFailed(
                f"pipeline busy: another facekd flow is reproducing {repo} (lock {path}, held by {holder}). "
                "Wait for it to finish and run again.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def capture(cmd: Sequence[str], cwd: Path, what: str) -> str:
    """Run a short query command and return its stdout; fail with its stderr."""
    proc = subprocess.run(list(cmd), cwd=cwd, env=child_env(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise CommandFailed(f"{what} failed with exit code {proc.returncode} in {cwd}: "
                            f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def parse_dot(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Nodes (in printed order) and ``(upstream, downstream)`` edges of ``dvc dag --dot``."""
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    for line in text.splitlines():
        if edge := _DOT_EDGE.match(line):
            edges.append((edge["src"], edge["dst"]))
        elif node := _DOT_NODE.match(line):
            nodes.append(node["node"])
    for src, dst in edges:
        nodes.extend(n for n in (src, dst) if n not in nodes)
    return nodes, edges


def topological_order(nodes: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[str]:
    """Kahn's sort; among ready nodes the one DVC printed first goes first (a stable order)."""
    rank = {node: i for i, node in enumerate(nodes)}
    upstream_left = {node: 0 for node in nodes}
    downstream: dict[str, list[str]] = {node: [] for node in nodes}
    for src, dst in edges:
        downstream[src].append(dst)
        upstream_left[dst] += 1
    ready = sorted((n for n, k in upstream_left.items() if k == 0), key=rank.__getitem__)
    order: list[str] = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for nxt in downstream[node]:
            upstream_left[nxt] -= 1
            if upstream_left[nxt] == 0:
                ready.append(nxt)
        ready.sort(key=rank.__getitem__)
    if len(order) != len(nodes):  # DVC rejects cycles itself; this guards a parse mistake
        raise CommandFailed(f"dvc dag has a cycle among {sorted(set(nodes) - set(order))}")
    return order


def stage_order(repo: Path) -> list[str]:
    """Every pipeline stage of ``repo`` in dependency order, as DVC names them (``distill@qud``).

    ``.dvc`` files (data added with ``dvc add``) are DAG nodes too but not stages, so they are
    dropped: ``dvc repro`` checks them as part of the stages that depend on them.
    """
    nodes, edges = parse_dot(capture(dvc_command("dag", "--dot"), repo, "dvc dag --dot"))
    return [n for n in topological_order(nodes, edges) if not n.endswith(".dvc")]


def select_stages(order: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """The stages of ``order`` named in ``wanted`` (all if None), kept in DAG order.

    A foreach group name selects all its items: ``distill`` -> ``distill@none``, ``distill@qud``...
    """
    if wanted is None:
        return list(order)
    unknown = [w for w in wanted if not any(s == w or s.startswith(f"{w}@") for s in order)]
    if unknown:
        raise ConfigError(f"unknown DVC stage(s) {unknown}; the pipeline has: {', '.join(order)}")
    return [s for s in order if any(s == w or s.startswith(f"{w}@") for w in wanted)]


def stage_changes(repo: Path, stage: str) -> list:
    """What ``dvc status <stage> --json`` reports for that one stage; empty when up to date.

    Without ``--with-deps`` DVC compares only this stage's own deps, params, command and outs
    with ``dvc.lock``, which is exactly "did this stage's inputs change".
    """
    out = capture(dvc_command("status", stage, "--json"), repo, f"dvc status {stage}")
    report = json.loads(out.strip() or "{}")
    return report.get(stage, [])


def read_schedule(repo: Path) -> ScheduleParams:
    """The ``schedule`` section of ``repo/params.yaml`` (defaults for missing keys), validated."""
    path = repo / "params.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the parameters file: {err}") from err
    try:
        return ScheduleParams(**(raw.get("schedule") or {}))
    except ValidationError as err:
        problems = "; ".join(f"schedule.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in err.errors())
        raise ConfigError(f"{path}: {problems}") from err
