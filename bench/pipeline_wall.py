"""Targets 7 and 8a: wall time and peak memory of the embedded pipeline (``dvc repro``).

In a temporary copy of the repository (the files git tracks or would track, committed to a fresh
git repo, so nothing is cached and no output exists): a cold ``dvc repro`` of params.yaml's
embedded default, then a second ``dvc repro`` with nothing changed. The copy's ``src`` comes first
on PYTHONPATH so its stages run the copied code. The process tree's memory is sampled every 0.5 s.

Targets: cold <= 15 minutes, no-op <= 15 seconds on the 2-core machine; peak RSS (summed over the
process tree: dvc, the stage, its workers) <= 4 GiB. A full run takes the whole pipeline's time:
run it once, on purpose (``python -m bench --only pipeline_wall``). ``--quick`` only checks the
machinery (copy, commit, ``dvc status``, memory sampling).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import common

COLD_LIMIT = 15 * 60.0
NOOP_LIMIT = 15.0
RSS_LIMIT = 4.0
SAMPLE_SECONDS = 0.5
TELEMETRY_OFF = {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
                 "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false"}


@dataclass(frozen=True)
class Run:
    """What one measured command did."""

    seconds: float
    peak_rss_gib: float  # RSS summed over the process tree, at its highest sample
    peak_pss_gib: float  # the same in PSS (shared pages split between the processes that share them)
    returncode: int
    log: Path


def copy_repo(dest: Path) -> Path:
    """The tracked and untracked-but-not-ignored files of this repo, committed to a new git repo."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=common.ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        src = common.ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    who = ["-c", "user.email=bench@facekd", "-c", "user.name=bench"]
    for cmd in (["git", "init", "-q"], ["git", *who, "add", "-A"], ["git", *who, "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def _env(repo: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, **TELEMETRY_OFF, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo / "src"), **(extra or {})}


def _tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over ``pid`` and its descendants (0 for processes already gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def measure(cmd: list[str], repo: Path, log: Path, extra_env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` in ``repo`` (with ``extra_env`` set); wall seconds and the process tree's peak memory."""
    peak_rss = peak_pss = 0
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=repo, env=_env(repo, extra_env), stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            rss, pss = _tree_memory(proc.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(SAMPLE_SECONDS)
        seconds = time.perf_counter() - start
    return Run(seconds, peak_rss / 2**30, peak_pss / 2**30, proc.returncode, log)


def _check(run: Run, what: str) -> None:
    if run.returncode != 0:
        tail = run.log.read_text()[-3000:]
        raise RuntimeError(f"{what} failed with exit code {run.returncode}; last output:\n{tail}")


def run(quick: bool = False) -> list[common.Result]:
    dvc = [sys.executable, "-m", "dvc"]
    with common.scratch_dir("pipeline") as tmp:
        repo = copy_repo(tmp / "repo")
        first = measure([*dvc, "status"] if quick else [*dvc, "repro"], repo, tmp / "first.log")
        _check(first, "the first dvc command")
        second = measure([sys.executable, "-c", "pass"] if quick else [*dvc, "repro"], repo, tmp / "second.log")
        _check(second, "the second dvc command")
    label = "dvc status (machinery check)" if quick else "cold dvc repro"
    note = "quick: dvc status, not the pipeline" if quick else common.load_average()
    op = "" if quick else "<="  # a machinery check passes or fails nothing
    return [
        common.emit(common.Result("pipeline_wall", "cold", f"{label} {first.seconds:.1f} s", first.seconds,
                                  what="s", op=op, limit=COLD_LIMIT, note=note)),
        common.emit(common.Result("pipeline_wall", "noop", f"{'a bare python' if quick else 'second dvc repro'} "
                                  f"{second.seconds:.1f} s", second.seconds, what="s", op=op, limit=NOOP_LIMIT)),
        common.emit(common.Result("memory", "pipeline", f"peak RSS of the process tree during the {label} "
                                  f"(PSS {first.peak_pss_gib:.2f} GiB)", first.peak_rss_gib, what="GiB", op=op,
                                  limit=RSS_LIMIT)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="check the machinery only (seconds)")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
