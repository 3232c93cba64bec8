"""IJB-B / IJB-C protocol files as insightface packages them, and 5-point face alignment.

Layout under ``<root>`` for a protocol ``<name>`` (``ijbb`` or ``ijbc``)::

    meta/<name>_face_tid_mid.txt         image_name template_id media_id
    meta/<name>_template_pair_label.txt  template_id_1 template_id_2 label(1 genuine, 0 impostor)
    meta/<name>_name_5pts_score.txt      image_name x1 y1 ... x5 y5 faceness_score
    meta/<name>_1N_gallery_G1.csv, _G2.csv (IJB-B: _S1, _S2), <name>_1N_probe_mixed.csv  (optional)
    loose_crop/<image_name>
"""
from __future__ import annotations

import csv
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from facekd.data.paths import Confined, shown
from facekd.errors import DataError
from facekd.fsio import write_bytes, write_text

log = logging.getLogger(__name__)

# The 112x112 ArcFace alignment target: eyes, nose tip, mouth corners (x, y) in pixels.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
ALIGNED_SIZE = 112
# Mean squared distance (px^2) of the 5 landmarks from their centre below which a face cannot be
# aligned (a real face's points lie tens of pixels apart).
_MIN_LANDMARK_SPREAD = 1e-3

# Column kinds per whitespace table: s = text, i = integer, f = finite float.
_TID_MID = "sii"
_PAIRS = "iii"
_FIVE_POINTS = "s" + "f" * 11
_GALLERY_NAMES = {"G1": ("G1", "S1"), "G2": ("G2", "S2")}


@dataclass(frozen=True, eq=False)  # DataFrame fields: compare explicitly, not with ==
class IJBProtocol:
    """One IJB protocol: images (row-aligned with ``landmarks``), 1:1 pairs and optional 1:N sets."""

    name: str
    root: Path
    images: pd.DataFrame  # image_name, template_id, media_id, faceness
    landmarks: np.ndarray  # (N, 5, 2) float32 pixel coordinates in the loose crop
    pairs: np.ndarray  # (P, 2) int64 template ids
    labels: np.ndarray  # (P,) int8, 1 genuine / 0 impostor
    gallery: pd.DataFrame | None  # template_id, subject_id, gallery ("G1"/"G2"), one row per template
    probes: pd.DataFrame | None  # template_id, subject_id[, image_name], one row per CSV row

    @functools.cached_property
    def _crops(self) -> Confined:
        return Confined(self.root / "loose_crop")

    def image_path(self, image_name: str) -> Path:
        """Real path of one loose crop; DataError unless it is a regular file inside ``loose_crop/``."""
        return self._crops.file(image_name, f"listed in the {self.name} protocol")


def _meta(root: Path, name: str, suffix: str) -> Path:
    return root / "meta" / f"{name}_{suffix}"


def _describe_kinds(kinds: str) -> str:
    words = {"s": "name", "i": "integer", "f": "number"}
    return " ".join(words[k] for k in kinds)


def _field_error(kind: str, field: str) -> str | None:
    """Why ``field`` is not of ``kind``, or None when it is."""
    try:
        if kind == "i":
            int(field)
        elif kind == "f" and not np.isfinite(float(field)):
            return f"{field!r} is not a finite number"
    except ValueError:
        return f"{field!r} is not {'an integer' if kind == 'i' else 'a number'}"
    return None


def _find_bad_line(path: Path, kinds: str, fallback: str) -> DataError:
    """Scan line by line for the first malformed line (error path only: the fast parse failed)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(kinds):
                return DataError(
                    f"{path}: line {lineno}: expected {len(kinds)} columns ({_describe_kinds(kinds)}), "
                    f"got {len(fields)}: {line.strip()[:200]!r}"
                )
            for col, (kind, field) in enumerate(zip(kinds, fields, strict=True), start=1):
                why = _field_error(kind, field)
                if why:
                    return DataError(f"{path}: line {lineno}, column {col}: {why}: {line.strip()[:200]!r}")
    return DataError(f"{path}: {fallback}")


def _line_of_row(path: Path, row: int) -> int:
    """1-based line number of data row ``row`` (blank lines skipped, as pandas does)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        seen = -1
        for lineno, line in enumerate(fh, start=1):
            seen += bool(line.strip())
            if seen == row:
                return lineno
    return row + 1


def _kind_ok(kind: str, column: pd.Series) -> bool:
    if kind == "i":
        return pd.api.types.is_integer_dtype(column)
    if kind == "f":
        return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    return True


def _read_table(path: Path, kinds: str, what: str) -> pd.DataFrame:
    """Whitespace-separated table with exactly ``len(kinds)`` typed columns; errors name the line."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        # Text columns stay text ("001.jpg" or "001" must not become the number 1).
        text_columns = {col: str for col, kind in enumerate(kinds) if kind == "s"}
        table = pd.read_csv(path, sep=r"\s+", header=None, dtype=text_columns)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: {what} is empty") from None
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as err:
        raise _find_bad_line(path, kinds, f"cannot parse {what} ({err})") from None
    # pandas pads short lines with NaN and infers text for a bad number: re-scan to name the line.
    typed = table.shape[1] == len(kinds) and all(_kind_ok(k, table[c]) for c, k in zip(table.columns, kinds))
    if not typed or table.isna().to_numpy().any():
        raise _find_bad_line(path, kinds, f"cannot parse {what}")
    floats = [c for c, k in zip(table.columns, kinds, strict=True) if k == "f"]
    if floats and not np.isfinite(table[floats].to_numpy(dtype=np.float64)).all():
        raise _find_bad_line(path, kinds, f"{what} has non-finite numbers")
    for c, k in zip(table.columns, kinds, strict=True):
        if k == "s":
            table[c] = table[c].astype(str)
    return table


def _join_landmarks(names: np.ndarray, five: pd.DataFrame, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 5, 2) landmarks and (N,) faceness for each image name, matched by name."""
    pts_names = five[0].to_numpy(dtype=str)
    with np.errstate(over="ignore"):  # a value past float32 becomes inf, refused just below
        values = five.iloc[:, 1:].to_numpy(dtype=np.float32)  # (M, 11)
    _check_landmarks(values, pts_names, path)
    if not np.array_equal(pts_names, names):
        index = pd.Index(pts_names)
        if not index.is_unique:
            dup = str(index[index.duplicated()][0])
            raise DataError(f"{path}: image {dup!r} is listed twice with landmarks")
        rows = index.get_indexer(names)
        if (rows < 0).any():
            missing = names[rows < 0]
            raise DataError(
                f"{path}: image {str(missing[0])!r}{_more(missing.size)} is in the template list but has "
                "no landmarks; every image needs a 5-point line"
            )
        values = values[rows]
    return values[:, :10].reshape(-1, 5, 2), values[:, 10]


def _check_landmarks(values: np.ndarray, names: np.ndarray, path: Path) -> None:
    """Each row's 5 points finite in float32 and spread apart: alignment divides by their spread."""
    points = values[:, :10].reshape(-1, 5, 2).astype(np.float64)  # (M, 5, 2)
    with np.errstate(invalid="ignore"):  # inf rows give nan here and are refused as not finite
        spread = ((points - points.mean(axis=1, keepdims=True)) ** 2).sum(axis=2).mean(axis=1)  # (M,)
    finite = np.isfinite(values).all(axis=1)
    bad = np.flatnonzero(~finite | ~(spread >= _MIN_LANDMARK_SPREAD))
    if bad.size:
        row = int(bad[0])
        why = "are not finite as float32" if not finite[row] else "(almost) coincide"
        raise DataError(
            f"{path}: line {_line_of_row(path, row)}: image {str(names[row])!r}: its landmarks/score {why}; "
            f"alignment needs 5 distinct points ({bad.size} such line(s)); fix or drop them"
        )


def _more(count: int) -> str:
    return f" (and {count - 1} more)" if count > 1 else ""


def _check_crops(root: Path, names: np.ndarray, listing: Path) -> None:
    """Every listed crop is a regular file inside ``loose_crop/`` (no ``../``, absolute path,
    symlink out or device); the error names the listing file and line."""
    crops = root / "loose_crop"
    if not crops.is_dir():
        raise DataError(f"{crops}: image folder not found")
    confined = Confined(crops)
    for row, name in enumerate(names):
        try:
            confined.file(name)
        except DataError as err:
            raise DataError(f"{err} (listed in {listing.name} line {_line_of_row(listing, row)})") from None


def _check_pairs(path: Path, pairs: pd.DataFrame, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = pairs[[0, 1]].to_numpy(dtype=np.int64)  # (P, 2)
    labels = pairs[2].to_numpy()
    bad_label = np.flatnonzero((labels != 0) & (labels != 1))
    if bad_label.size:
        row = int(bad_label[0])
        raise DataError(f"{path}: line {_line_of_row(path, row)}: label {labels[row]} must be 0 or 1")
    unknown = np.flatnonzero(~np.isin(ids, templates).all(axis=1))
    if unknown.size:
        row = int(unknown[0])
        tid = int(ids[row][~np.isin(ids[row], templates)][0])
        raise DataError(
            f"{path}: line {_line_of_row(path, row)}: template {tid} has no images in the template list"
        )
    if labels.min() == labels.max():
        kind = "genuine (label 1)" if labels[0] == 1 else "impostor (label 0)"
        raise DataError(f"{path}: all {labels.size} pairs are {kind}; TAR at FAR needs both genuine and "
                        "impostor pairs: use the protocol's full pair list")
    return ids, labels.astype(np.int8)


def _read_1n_csv(path: Path) -> pd.DataFrame:
    """TEMPLATE_ID, SUBJECT_ID (+ FILENAME) of a 1:N gallery/probe CSV."""
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot parse the 1:N CSV ({err})") from None
    table.columns = [str(c).strip().upper() for c in table.columns]
    for col in ("TEMPLATE_ID", "SUBJECT_ID"):
        if col not in table.columns:
            raise DataError(f"{path}: the header has no {col} column (found {list(table.columns)[:6]})")
        if not pd.api.types.is_integer_dtype(table[col]):
            raise _bad_csv_line(path, col)
    out = pd.DataFrame({"template_id": table["TEMPLATE_ID"].astype(np.int64),
                        "subject_id": table["SUBJECT_ID"].astype(np.int64)})
    if "FILENAME" in table.columns:
        out["image_name"] = table["FILENAME"].astype(str)
    return out


def _bad_csv_line(path: Path, col: str) -> DataError:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = [h.strip().upper() for h in next(reader)]
        at = header.index(col)
        for row in reader:
            field = row[at].strip() if at < len(row) else ""
            if _field_error("i", field) or not field:
                return DataError(f"{path}: line {reader.line_num}: {col} {field!r} is not an integer")
    return DataError(f"{path}: {col} is not an integer column")


def _load_gallery(root: Path, name: str, templates: np.ndarray) -> pd.DataFrame | None:
    parts = []
    for tag, spellings in _GALLERY_NAMES.items():
        found = [p for s in spellings if (p := _meta(root, name, f"1N_gallery_{s}.csv")).is_file()]
        if found:
            part = _read_1n_csv(found[0])[["template_id", "subject_id"]].drop_duplicates()
            _check_1n(found[0], part, templates)
            parts.append(part.assign(gallery=tag))
    if not parts:
        return None
    return pd.concat(parts, ignore_index=True)


def _check_1n(path: Path, table: pd.DataFrame, templates: np.ndarray) -> None:
    subjects = table[["template_id", "subject_id"]].drop_duplicates()
    dup = subjects["template_id"].duplicated()
    if dup.any():
        tid = int(subjects["template_id"][dup].iloc[0])
        raise DataError(f"{path}: template {tid} is listed with two different subjects")
    unknown = ~np.isin(table["template_id"].to_numpy(), templates)
    if unknown.any():
        tid = int(table["template_id"][unknown].iloc[0])
        raise DataError(f"{path}: template {tid} has no images in the template list")


def _load_probes(root: Path, name: str, templates: np.ndarray) -> pd.DataFrame | None:
    path = _meta(root, name, "1N_probe_mixed.csv")
    if not path.is_file():
        return None
    probes = _read_1n_csv(path)
    _check_1n(path, probes, templates)
    return probes


def load_ijb(root: str | Path, name: str) -> IJBProtocol:
    """Read and cross-check one IJB protocol (``name`` is the file prefix, e.g. ``ijbc``)."""
    root = Path(root)
    tid_path = _meta(root, name, "face_tid_mid.txt")
    pts_path = _meta(root, name, "name_5pts_score.txt")
    pair_path = _meta(root, name, "template_pair_label.txt")
    tid_mid = _read_table(tid_path, _TID_MID, "template/media list")
    five = _read_table(pts_path, _FIVE_POINTS, "landmark list")
    names = tid_mid[0].to_numpy(dtype=str)
    landmarks, faceness = _join_landmarks(names, five, pts_path)
    _check_crops(root, names, tid_path)
    images = pd.DataFrame({
        "image_name": names,
        "template_id": tid_mid[1].to_numpy(dtype=np.int64),
        "media_id": tid_mid[2].to_numpy(dtype=np.int64),
        "faceness": faceness,
    })
    templates = np.unique(images["template_id"].to_numpy())
    pairs, labels = _check_pairs(pair_path, _read_table(pair_path, _PAIRS, "template pair list"), templates)
    log.info("%s: %d images, %d templates, %d pairs", shown(name), len(images), templates.size, len(pairs))
    return IJBProtocol(
        name=name, root=root, images=images, landmarks=landmarks, pairs=pairs, labels=labels,
        gallery=_load_gallery(root, name, templates), probes=_load_probes(root, name, templates),
    )


def protocol_names(root: str | Path) -> list[str]:
    """Protocol prefixes found under ``<root>/meta`` (from ``*_face_tid_mid.txt``)."""
    meta = Path(root) / "meta"
    suffix = "_face_tid_mid.txt"
    names = sorted(p.name[: -len(suffix)] for p in meta.glob(f"*{suffix}")) if meta.is_dir() else []
    odd = [n for n in names if not n.isprintable()]
    if odd:  # it would be printed in every message and log line about this protocol
        raise DataError(f"{shown(meta)}: protocol file name {odd[0] + suffix!r} holds unprintable characters; rename it")
    return names


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity (rotation, uniform scale, shift) mapping src onto dst (Umeyama)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean  # (K, 2) centred points
    src_var = (src_c**2).sum() / len(src)
    if src_var < 1e-12:
        raise DataError("landmarks are degenerate (all points coincide); cannot align the face")
    cov = dst_c.T @ src_c / len(src)  # (2, 2)
    u, sing, vt = np.linalg.svd(cov)
    reflect = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ reflect @ vt
    scale = np.trace(np.diag(sing) @ reflect) / src_var
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


def align_face(img: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Warp a face so its 5 landmarks land on ``ARCFACE_TEMPLATE``: (112, 112, 3), same dtype as ``img``."""
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    return cv2.warpAffine(img, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), borderValue=0.0)


def _table_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(sep=" ", header=False, index=False, lineterminator="\n", float_format="%.6f")


def _write_1n(path: Path, table: pd.DataFrame) -> None:
    out = pd.DataFrame({"TEMPLATE_ID": table["template_id"].astype(np.int64),
                        "SUBJECT_ID": table["subject_id"].astype(np.int64)})
    if "image_name" in table.columns:
        out["FILENAME"] = table["image_name"].astype(str)
    write_text(path, out.to_csv(index=False, lineterminator="\n"))


def write_ijb(
    root: str | Path,
    name: str,
    *,
    images: Mapping[str, bytes],
    face_tid_mid: pd.DataFrame,
    landmarks: np.ndarray,
    faceness: np.ndarray,
    pairs: np.ndarray,
    labels: np.ndarray,
    gallery_g1: pd.DataFrame | None = None,
    gallery_g2: pd.DataFrame | None = None,
    probes: pd.DataFrame | None = None,
) -> None:
    """Write a protocol in insightface's IJB layout (each file atomically).

    ``face_tid_mid`` has columns image_name, template_id, media_id; ``landmarks`` (N, 5, 2) and
    ``faceness`` (N,) follow its rows; galleries/probes have template_id, subject_id[, image_name].
    """
    root = Path(root)
    n = len(face_tid_mid)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (n, 5, 2) or np.shape(faceness) != (n,):
        raise ValueError(f"write_ijb: need landmarks (N, 5, 2) and faceness (N,) for N={n} images")
    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or np.shape(labels) != (len(pairs),):
        raise ValueError("write_ijb: need pairs (P, 2) and labels (P,)")
    names = face_tid_mid["image_name"].astype(str).tolist()
    missing = [x for x in names if x not in images]
    if missing:
        raise ValueError(f"write_ijb: no image bytes for {missing[0]!r}")
    for image_name, data in images.items():
        write_bytes(root / "loose_crop" / image_name, data)
    tid_mid = face_tid_mid[["image_name", "template_id", "media_id"]]
    write_text(_meta(root, name, "face_tid_mid.txt"), _table_text(tid_mid))
    five = pd.DataFrame(landmarks.reshape(n, 10))
    five.insert(0, "image_name", names)
    five["faceness"] = np.asarray(faceness, dtype=np.float64)
    write_text(_meta(root, name, "name_5pts_score.txt"), _table_text(five))
    pair_table = pd.DataFrame({"t1": pairs[:, 0], "t2": pairs[:, 1], "label": np.asarray(labels, dtype=np.int64)})
    write_text(_meta(root, name, "template_pair_label.txt"), _table_text(pair_table))
    for tag, table in (("G1", gallery_g1), ("G2", gallery_g2), ("probe_mixed", probes)):
        if table is not None:
            suffix = f"1N_gallery_{tag}.csv" if tag != "probe_mixed" else "1N_probe_mixed.csv"
            _write_1n(_meta(root, name, suffix), table)
