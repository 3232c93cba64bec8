"""Stage ``prepare``: build ``data/prepared`` (train.rec/.idx + meta.json) and ``data/eval``.

Sources: the embedded synthetic generator, an insightface ``.rec`` (with its eval ``.bin``
files in ``data.eval_path``), or an identity-per-folder image tree. Outputs are built in
temporary sibling folders and moved into place only when complete, and only if replacing them
would delete no input, no other output, the repository or the home folder
(:func:`facekd.fsio.replaced_dir`).

``data.path`` and ``data.eval_path`` are deps of this stage in ``dvc.yaml`` (their content is
hashed into ``dvc.lock``); their default folders under ``data/raw/`` hold only a hidden
``.gitignore`` (so real images never enter git), which is why hidden files are never data here.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from facekd.config import Params
from facekd.errors import DataError
from facekd.fsio import replaced_dir, write_json

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    data = params.data
    _check_sources(data.source, data.path, data.eval_path)
    inputs = {"data.path": data.path, "data.eval_path": data.eval_path}
    with (replaced_dir("data.prepared_dir", data.prepared_dir, {**inputs, "data.eval_dir": data.eval_dir}) as train_tmp,
          replaced_dir("data.eval_dir", data.eval_dir, {**inputs, "data.prepared_dir": data.prepared_dir}) as eval_tmp):
        if data.source == "synthetic":
            from facekd.data.synthetic import generate

            summary = generate(data.synthetic, train_tmp, eval_tmp, progress=True)
            log.info("synthetic data: %s", summary)
        elif data.source == "rec":
            _link_rec(Path(data.path), train_tmp)
            _link_eval(data.eval_path, eval_tmp)
        elif data.source == "folder":
            _folder_to_rec(Path(data.path), train_tmp)
            _link_eval(data.eval_path, eval_tmp)
        else:
            raise DataError(
                "data.source 'unlabeled' is read directly by label-free methods (qud) and has no prepare "
                "step yet; set data.source to synthetic, rec or folder"
            )
        write_json(train_tmp / "meta.json", _meta(train_tmp, data.source))


def _check_sources(source: str, path: str | None, eval_path: str | None) -> None:
    """Refuse a missing data.path / data.eval_path before converting anything (a folder of
    millions of images takes hours to convert; a typo must not cost that)."""
    if source in ("rec", "folder") and not Path(path).exists():
        raise DataError(f"{path}: not found (data.path, data.source '{source}'); fix data.path in params.yaml")
    if eval_path and not Path(eval_path).is_dir():
        raise DataError(f"{eval_path}: data.eval_path must be a folder of .bin files (and optional ijb/, mfr/); "
                        "fix data.eval_path in params.yaml")


def _meta(train_dir: Path, source: str) -> dict:
    from facekd.data.face_rec import FaceRecordFile

    rec = FaceRecordFile(train_dir / "train.rec", train_dir / "train.idx")
    image = rec.image(0)
    return {
        "source": source,
        "num_images": int(rec.num_images),
        "num_classes": int(rec.num_classes),
        "image_size": list(image.shape),
        "data_hash": _file_hash(train_dir / "train.idx", train_dir / "train.rec"),
    }


def _file_hash(*paths: Path) -> str:
    """sha256 over the index and the record file (streamed; the .rec may be many GB)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _place(src: Path, dst: Path) -> None:
    """Hard-link when possible (real datasets are many GB), copy otherwise."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link_rec(path: Path, out: Path) -> None:
    rec = path / "train.rec" if path.is_dir() else path
    idx = rec.with_suffix(".idx")
    for f in (rec, idx):
        if not f.is_file():
            raise DataError(f"{f}: not found (data.path must be a train.rec or a folder holding train.rec + train.idx)")
    _place(rec, out / "train.rec")
    _place(idx, out / "train.idx")


def _link_eval(eval_path: str | None, out: Path) -> None:
    if not eval_path:
        log.warning("data.eval_path not set: no evaluation sets prepared")
        return
    src = Path(eval_path)  # checked to be a folder by _check_sources
    files = [f for f in sorted(src.rglob("*")) if f.is_file() and _visible(f, src)]
    if not files:
        log.warning("data.eval_path %s holds no evaluation sets: none prepared", src)
    for f in files:
        dst = out / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        _place(f, dst)


def _visible(path: Path, root: Path) -> bool:
    # Hidden files and folders (the .gitignore placeholder, .DS_Store, ._ files) are not eval data.
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _folder_to_rec(root: Path, out: Path) -> None:
    from facekd.data.folder import scan_identity_folders
    from facekd.data.images import decode_image
    from facekd.data.face_rec import write_face_rec

    paths, labels, names = scan_identity_folders(root)
    log.info("folder %s: %d images of %d identities", root, len(paths), len(names))

    def items() -> Iterator[tuple[int, bytes]]:
        for path, label in zip(paths, labels, strict=True):
            blob = path.read_bytes()
            decode_image(blob, str(path))  # fail here, naming the file, rather than in training
            yield int(label), blob

    write_face_rec(out / "train.rec", out / "train.idx", items())
