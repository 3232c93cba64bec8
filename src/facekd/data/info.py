"""``facekd info``: recognise a face dataset in any supported format and summarise it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from facekd.data.bins import load_bin
from facekd.data.folder import is_image_file, scan_identity_folders, scan_unlabeled
from facekd.data.ijb_protocol import load_ijb, protocol_names
from facekd.data.images import decode_image, read_image_file
from facekd.data.face_rec import FaceRecordFile
from facekd.errors import DataError


def _shape(img: Any) -> list[int]:
    return [int(v) for v in img.shape]


def _describe_rec(rec_path: Path) -> dict:
    faces = FaceRecordFile(rec_path)
    return {
        "format": "recordio",
        "path": str(rec_path),
        "num_images": faces.num_images,
        "num_classes": faces.num_classes,
        "image_size": _shape(faces.image(0)),
    }


def _describe_bin(path: Path) -> dict:
    images, issame = load_bin(path)
    summary = {
        "format": "bin",
        "path": str(path),
        "num_images": len(images),
        "pairs": int(issame.size),
        "genuine_pairs": int(issame.sum()),
    }
    if images:
        summary["image_size"] = _shape(decode_image(images[0], f"{path}: image 0 (pair 0)"))
    return summary


def _describe_ijb(root: Path, names: list[str]) -> dict:
    protocols = {}
    for name in names:
        proto = load_ijb(root, name)
        protocols[name] = {
            "num_images": len(proto.images),
            "templates": int(proto.images["template_id"].nunique()),
            "pairs": len(proto.pairs),
            "genuine_pairs": int(proto.labels.sum()),
            "gallery_templates": None if proto.gallery is None else int(proto.gallery["template_id"].nunique()),
            "probe_templates": None if proto.probes is None else int(proto.probes["template_id"].nunique()),
        }
    return {"format": "ijb", "path": str(root), "protocols": protocols}


def _describe_folder(root: Path) -> dict:
    if any(is_image_file(p) for p in root.iterdir()):
        paths = scan_unlabeled(root)
        return {
            "format": "unlabeled",
            "path": str(root),
            "num_images": len(paths),
            "image_size": _shape(read_image_file(paths[0])),
        }
    paths, _, names = scan_identity_folders(root)
    return {
        "format": "folder",
        "path": str(root),
        "num_images": len(paths),
        "num_classes": len(names),
        "image_size": _shape(read_image_file(paths[0])),
    }


def _is_eval_root(root: Path) -> bool:
    """The prepared evaluation layout (``data/eval``): .bin pair sets, ``ijb/``, ``mfr/``."""
    return any(root.glob("*.bin")) or bool(protocol_names(root / "ijb")) or (root / "mfr").is_dir()


def _describe_eval(root: Path) -> dict:
    """Every benchmark of an evaluation folder, each described in its own format."""
    summary: dict = {"format": "eval", "path": str(root),
                     "verification": {p.stem: _describe_bin(p) for p in sorted(root.glob("*.bin"))}}
    ijb_names = protocol_names(root / "ijb")
    if ijb_names:
        summary["ijb"] = _describe_ijb(root / "ijb", ijb_names)
    mfr = root / "mfr"
    if mfr.is_dir():  # masked probes vs unmasked gallery, identity folders each
        summary["mfr"] = {part.name: _describe_folder(part) for part in sorted(mfr.iterdir()) if part.is_dir()}
    return summary


def describe(path: str | Path) -> dict:
    """JSON-able summary of a .rec (or a folder holding train.rec), a .bin, an IJB root, an
    evaluation folder (.bin sets, ijb/, mfr/), or an image folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    if path.is_file():
        if path.suffix in (".rec", ".idx"):
            return _describe_rec(path.with_suffix(".rec"))
        if path.suffix == ".bin":
            return _describe_bin(path)
        raise DataError(f"{path}: not a recognised dataset file (expected .rec/.idx or a verification .bin)")
    if (path / "train.rec").is_file():
        return _describe_rec(path / "train.rec")
    names = protocol_names(path)
    if names:
        return _describe_ijb(path, names)
    if _is_eval_root(path):
        return _describe_eval(path)
    has_images = any(is_image_file(p) for p in path.rglob("*"))
    if has_images:
        return _describe_folder(path)
    raise DataError(
        f"{path}: not a recognised dataset (no train.rec, no meta/*_face_tid_mid.txt, no image files)"
    )
