"""Hostile inputs (forged image headers, pickle and YAML bombs) and a memory-bounded child process
that feeds them to facekd's readers.

Memory-bound cases never run a reader in the test process: a regression would take the machine's
memory with it. They run in a child under ``RLIMIT_AS`` = 1.5 GiB (the bound the readers must keep
on a file of a few KB); the child reports, per input, the DataError message or the exception a
reader raised instead, and its peak RSS comes back through ``wait4``.

``python -m tests.faults.hostile KIND PATH...`` is that child (run from the repository root).
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np

from facekd.data.recordio import IRHeader, RecordIOWriter, pack_record

ROOT = Path(__file__).resolve().parents[2]
LIMIT_AS = 1536 << 20  # bytes of address space a reader may use on a file of a few KB
CPU_SECONDS = 120
FACEKD = str(Path(sys.executable).parent / "facekd")


# ---- the bounded child -------------------------------------------------------------------------

# The bounded command is started by a small Python launcher, not by the test process: a child's
# peak RSS (wait4's ru_maxrss) starts at the RSS of the process it was forked from, and a pytest
# worker that has imported torch and run hundreds of tests holds ~1 GiB. The launcher is ~10 MiB.
_LAUNCHER = """
import json, os, resource, subprocess, sys
cmd, limit_as, cpu, report = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def limits():
    resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))  # a safety net against endless expansion
child = subprocess.Popen(cmd, preexec_fn=limits)
_, status, usage = os.wait4(child.pid, 0)
with open(report, "w") as out:
    json.dump({"code": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, out)
"""


def run_bounded(cmd: list[str], cwd: Path = ROOT) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak RSS in MiB) of ``cmd`` run under RLIMIT_AS = LIMIT_AS."""
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as report:
        launcher = [sys.executable, "-c", _LAUNCHER, json.dumps(cmd), str(LIMIT_AS), str(CPU_SECONDS), report.name]
        subprocess.run(launcher, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, check=True,
                       timeout=4 * CPU_SECONDS)
        result = json.loads(Path(report.name).read_text())
        out.seek(0)
        err.seek(0)
        return result["code"], out.read().decode(errors="replace"), err.read().decode(errors="replace"), \
            result["maxrss_kib"] / 1024


def read_bounded(kind: str, paths: list[Path]) -> tuple[list[dict], float]:
    """Each path through the reader ``kind`` in one bounded child: ([{path, error|crash|ok}], peak MiB)."""
    rc, out, err, peak = run_bounded([sys.executable, "-m", "tests.faults.hostile", kind, *map(str, paths)])
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert rc == 0 and len(results) == len(paths), f"child died (exit {rc}) after {len(results)} inputs:\n{err[-3000:]}"
    return results, peak


def _read(kind: str, path: Path) -> None:
    from facekd.config import load_params
    from facekd.data.bins import decode_bin, load_bin
    from facekd.data.folder import scan_identity_folders
    from facekd.data.images import read_image_file
    from facekd.data.face_rec import FaceRecordFile
    from facekd.data.validation import eval_manifest

    if kind == "rec":
        faces = FaceRecordFile(path)
        for i in range(faces.num_images):
            faces.image(i)
    elif kind == "bin":
        decode_bin(path)
    elif kind == "bin-load":
        load_bin(path)
    elif kind == "folder":
        for image in scan_identity_folders(path)[0]:
            read_image_file(image)
    elif kind == "eval-folder":
        eval_manifest(path)
    elif kind == "params":
        load_params(path)
    else:
        raise ValueError(kind)


def _child(kind: str, paths: list[str]) -> None:
    from facekd.errors import FacekdError

    for path in paths:
        try:
            _read(kind, Path(path))
            result = {"path": path, "ok": True}
        except FacekdError as err:
            result = {"path": path, "error": str(err)}
        except BaseException as err:  # noqa: BLE001 -- what a reader must never raise is the finding
            result = {"path": path, "crash": f"{type(err).__name__}: {str(err)[:300]}"}
        print(json.dumps(result), flush=True)


# ---- forged images -----------------------------------------------------------------------------

def _encoded(ext: str, params: list[int] | None = None, size: int = 8) -> bytes:
    img = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok
    return buf.tobytes()


def forged_jpeg(width: int, height: int, progressive: bool = False) -> bytes:
    """A real 8x8 JPEG (~650 bytes) whose start-of-frame segment declares ``width`` x ``height``."""
    data = bytearray(_encoded(".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]))
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def forged_png(width: int, height: int) -> bytes:
    """An 8x8 PNG whose IHDR declares ``width`` x ``height`` (CRC fixed, so libpng believes it)."""
    data = bytearray(_encoded(".png"))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def forged_bmp(width: int, height: int) -> bytes:
    data = bytearray(_encoded(".bmp"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def forged_webp(width: int, height: int) -> bytes:
    """A lossy WebP whose VP8 frame header declares ``width`` x ``height`` (14 bits each)."""
    data = bytearray(_encoded(".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]))
    assert data[12:16] == b"VP8 "
    struct.pack_into("<HH", data, 26, width, height)
    return bytes(data)


FORGERS = {"jpeg": forged_jpeg, "png": forged_png, "bmp": forged_bmp, "webp": forged_webp}


def good_jpeg(seed: int = 0, size: int = 112) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


# ---- datasets holding one hostile image ----------------------------------------------------------

def write_rec(rec: Path, images: list[bytes], header: tuple[float, float] | None = None) -> Path:
    """insightface layout: one identity per 2 images; ``header`` overrides record 0's [a, b)."""
    rec.parent.mkdir(parents=True, exist_ok=True)
    n = len(images)
    starts = list(range(1, n + 1, 2))
    a, b = n + 1, n + 1 + len(starts)
    with RecordIOWriter(rec, rec.with_suffix(".idx")) as writer:
        writer.write(0, pack_record(IRHeader(2, np.array(header or (a, b), np.float32), 0, 0), b""))
        for key, data in enumerate(images, start=1):
            writer.write(key, pack_record(IRHeader(0, float((key - 1) // 2), key, 0), data))
        for c, start in enumerate(starts):
            end = min(start + 2, n + 1)
            writer.write(a + c, pack_record(IRHeader(2, np.array([start, end], np.float32), a + c, 0), b""))
    return rec


def write_pickle(path: Path, obj: object, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def write_folder(root: Path, images: dict[str, bytes]) -> Path:
    """``images``: relative path (``identity/name``) -> bytes."""
    for name, data in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2:])


def write_protocol(root: Path, name: str = "ijbc") -> Path:
    """A 6-image, 3-template IJB protocol in insightface's layout; returns its template list file."""
    import pandas as pd

    from facekd.data.ijb_protocol import ARCFACE_TEMPLATE, write_ijb

    names = [f"{i}.jpg" for i in range(1, 7)]
    rng = np.random.default_rng(0)
    write_ijb(
        root, name,
        images={n: good_jpeg(i, 24) for i, n in enumerate(names)},
        face_tid_mid=pd.DataFrame({"image_name": names, "template_id": [10, 10, 20, 20, 30, 30],
                                   "media_id": [100, 101, 200, 200, 300, 301]}),
        landmarks=ARCFACE_TEMPLATE[None] / 5 + rng.normal(0, 0.5, (6, 5, 2)),
        faceness=np.linspace(0.5, 0.99, 6),
        pairs=np.array([[10, 20], [10, 30], [20, 30]]),
        labels=np.array([1, 0, 0]),
    )
    return root / "meta" / f"{name}_face_tid_mid.txt"


def rename_in_protocol(root: Path, row: int, new: str, name: str = "ijbc") -> None:
    """Image ``row`` of the template list (and its landmark line) now names ``new``."""
    for suffix in ("face_tid_mid.txt", "name_5pts_score.txt"):
        path = root / "meta" / f"{name}_{suffix}"
        lines = path.read_text().splitlines()
        fields = lines[row].split(" ")
        lines[row] = " ".join([new, *fields[1:]])
        path.write_text("\n".join(lines) + "\n")
