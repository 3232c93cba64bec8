"""Procedural synthetic faces: identity parameters and a 2.5-D renderer (numpy, Pillow, OpenCV).

An identity is a seeded parameter vector (face shape, skin, eyes, brows, nose, mouth, hair,
facial hair, ears, moles, glasses). :func:`render` draws it on a 2x supersampled canvas under
per-image nuisance (pose, expression, background, lighting, blur, low resolution, JPEG
artefacts, noise, partial occlusion, an optional surgical mask) and returns a 112x112 RGB image
with its five landmarks. Face coordinates: x right, y down, z towards the camera, 1 unit ~ half
a face height. Regions of the face are sampled on a head ellipsoid, rotated, projected
orthographically and filled as convex hulls, so the face stays whole at large yaw.
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

from facekd.data.images import encode_jpeg

OUT = 112  # output side, pixels
SS = 2  # supersampling of the drawing canvas (anti-aliasing)
CANVAS = OUT * SS
HEAD_DEPTH = 0.75  # z of the face surface at its centre

Identity = dict[str, Any]
Colour = tuple[int, ...]

SKIN = np.array([
    [255, 224, 196], [241, 194, 167], [224, 172, 138], [198, 144, 110],
    [176, 120, 86], [141, 94, 62], [112, 72, 46], [82, 52, 34],
], dtype=np.float64)
HAIR = np.array([
    [20, 16, 14], [45, 32, 24], [80, 56, 38], [120, 86, 52], [165, 120, 70],
    [210, 175, 120], [150, 60, 30], [128, 128, 128], [220, 220, 215],
], dtype=np.float64)
IRIS = np.array([
    [60, 40, 25], [95, 65, 40], [70, 110, 60], [70, 110, 160], [120, 140, 150], [35, 25, 20],
], dtype=np.float64)
MASK_COLOURS = np.array([[170, 200, 230], [235, 235, 235], [30, 30, 35], [120, 160, 200]], dtype=np.float64)
RING_SCALES = (1.0, 0.85, 0.65, 0.4, 0.15)  # outline copies sampling the inside of a face region


def _mix(palette: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """A colour between two neighbouring palette entries, jittered."""
    i = int(rng.integers(len(palette)))
    j = min(i + 1, len(palette) - 1)
    t = rng.uniform()
    return np.clip(palette[i] * (1 - t) + palette[j] * t + rng.normal(0, jitter, 3), 0, 255)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity: stable geometry and colours (all lengths in face units)."""
    p: Identity = {}
    p["fw"] = rng.uniform(0.56, 0.72)  # half face width
    p["fh"] = rng.uniform(0.86, 1.02)  # half face height
    p["jaw"] = rng.uniform(0.50, 0.95)  # jaw width factor
    p["chin"] = rng.uniform(0.0, 0.35)  # chin pointiness
    p["cheek"] = rng.uniform(-0.05, 0.08)  # cheek bulge
    p["skin"] = _mix(SKIN, rng, 6)
    p["eye_y"] = rng.uniform(-0.12, 0.0)
    p["eye_dx"] = rng.uniform(0.22, 0.30)
    p["eye_w"] = rng.uniform(0.105, 0.145)
    p["eye_h"] = rng.uniform(0.35, 0.60)  # height / width
    p["eye_tilt"] = rng.uniform(-0.25, 0.25)
    p["iris"] = _mix(IRIS, rng, 10)
    p["iris_r"] = rng.uniform(0.30, 0.42)  # relative to eye width
    p["brow_dy"] = rng.uniform(0.10, 0.20)
    p["brow_th"] = rng.uniform(0.018, 0.05)
    p["brow_ang"] = rng.uniform(-0.25, 0.35)
    p["brow_arch"] = rng.uniform(0.0, 0.06)
    p["brow_len"] = rng.uniform(0.9, 1.5)
    p["nose_len"] = rng.uniform(0.25, 0.38)
    p["nose_w"] = rng.uniform(0.10, 0.17)
    p["nose_depth"] = rng.uniform(0.25, 0.45)
    p["mouth_y"] = rng.uniform(0.45, 0.58)
    p["mouth_w"] = rng.uniform(0.18, 0.27)
    p["lip_up"] = rng.uniform(0.02, 0.05)
    p["lip_lo"] = rng.uniform(0.03, 0.07)
    p["lip"] = np.clip(p["skin"] * rng.uniform(0.55, 0.8) + np.array([40, 0, 5]) * rng.uniform(0.3, 1.0), 0, 255)
    p["hair"] = _mix(HAIR, rng, 8)
    p["hair_style"] = int(rng.choice(5, p=[0.07, 0.38, 0.30, 0.15, 0.10]))  # bald, short, long, bob, curly
    p["hairline"] = rng.uniform(-0.80, -0.45)
    p["part"] = rng.uniform(-0.5, 0.5)
    p["fringe"] = rng.uniform(0.0, 0.25) if rng.uniform() < 0.35 else 0.0
    male = rng.uniform() < 0.5
    p["beard"] = rng.uniform(0.35, 0.9) if (male and rng.uniform() < 0.35) else 0.0
    p["moustache"] = rng.uniform(0.4, 0.9) if (male and rng.uniform() < 0.35) else 0.0
    p["ear"] = rng.uniform(0.12, 0.20)
    p["glasses"] = int(rng.uniform() < 0.15)
    p["glass_col"] = _mix(HAIR[:4], rng, 20)
    n_moles = rng.poisson(1.2)
    p["moles"] = [(rng.uniform(-0.5, 0.5), rng.uniform(-0.4, 0.6), rng.uniform(0.008, 0.02)) for _ in range(n_moles)]
    p["freckles"] = bool(rng.uniform() < 0.12)
    p["freck_seed"] = int(rng.integers(1 << 30))
    return p


def identity_fingerprint(p: Identity) -> str:
    """SHA-1 over every parameter in key order: equal fingerprints mean the same face."""
    digest = hashlib.sha1()
    for key in sorted(p):
        digest.update(key.encode())
        digest.update(np.asarray(p[key], dtype=np.float64).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class Session:
    """Conditions shared by the images of one capture session (an IJB "media")."""

    pose: np.ndarray  # (3,) yaw, pitch, roll in radians
    background: np.ndarray  # (3,) RGB
    blobs: tuple[tuple[float, float, float, Colour], ...]  # background discs: x, y, radius (canvas px), colour
    cloth: Colour
    light: np.ndarray  # (3,) unit direction of the key light
    ambient: float
    ramp: tuple[float, float]  # brightness gradient of the background across x and y
    cast: np.ndarray  # (3,) per-channel gain (white balance)
    exposure: float
    gamma: float


@dataclass(frozen=True, eq=False)
class Nuisance:
    """Everything random about one image besides its session."""

    pose: np.ndarray  # (3,) yaw, pitch, roll in radians
    scale: float
    shift: np.ndarray  # (2,) in canvas fractions
    smile: float
    mouth_open: float
    blink: float  # 1 open .. 0.1 nearly closed
    brow_up: float
    gaze: np.ndarray  # (2,)
    blur: float  # Gaussian sigma at output resolution
    low_res: float  # 0, or the downscale factor
    jpeg: int  # 0, or the quality of an extra JPEG round trip
    noise: float  # sigma of additive Gaussian noise (0..255 scale)
    mask_colour: Colour
    mask_top: float  # 0..1 along the nose
    occluder: tuple[float, float, float, Colour] | None  # face x, y, radius, colour


def sample_session(rng: np.random.Generator, k: float) -> Session:
    """Draw background, clothing, pose and lighting; ``k`` scales every nuisance."""
    grey, sat = rng.uniform(30, 230), rng.uniform(0, 0.5)
    background = grey * (1 - sat) + rng.uniform(0, 255, 3) * sat
    blob_base = np.clip(background + rng.normal(0, 60, 3), 0, 255)
    blobs = tuple(
        (*rng.uniform(0, CANVAS, 2).tolist(), rng.uniform(10, 80), _rgb(blob_base * rng.uniform(0.7, 1.2) % 256))
        for _ in range(int(rng.integers(0, 4)))
    )
    cloth = _rgb(rng.uniform(20, 200) * 0.6 + rng.uniform(0, 255, 3) * 0.4)
    pose = np.array([rng.normal(0, 0.30 * k), rng.normal(0, 0.15 * k), rng.normal(0, 0.10 * k)])
    light = np.array([rng.normal(0, 0.6 * k), rng.normal(-0.3, 0.4 * k), 1.0])
    return Session(
        pose=pose, background=background, blobs=blobs, cloth=cloth,
        light=light / np.linalg.norm(light), ambient=rng.uniform(0.55, 0.85),
        ramp=(rng.normal(0, 0.15 * k), rng.normal(0, 0.1 * k)),
        cast=np.exp(rng.normal(0, 0.08 * k, 3)), exposure=math.exp(rng.normal(0, 0.18 * k)),
        gamma=math.exp(rng.normal(0, 0.15 * k)),
    )


def sample_nuisance(
    rng: np.random.Generator, k: float, session: Session, pose_jitter: float, yaw: float | None = None,
) -> Nuisance:
    """Draw per-image pose around the session's, expression and degradations.

    Every value is drawn whether used or not, so a masked and an unmasked render of the
    same generator differ only by the mask. ``yaw`` replaces the drawn yaw.
    """
    pose = session.pose + rng.normal(0, 1, 3) * pose_jitter * np.array([1.0, 0.5, 0.5])
    if yaw is not None:
        pose[0] = yaw
    blur = abs(rng.normal(0, 0.6 * k))
    low_res = rng.uniform(0.3, 0.7) if rng.uniform() < 0.25 * k else 0.0
    jpeg = int(rng.uniform(20, 70)) if rng.uniform() < 0.3 * k else 0
    mask_colour = _rgb(MASK_COLOURS[rng.integers(len(MASK_COLOURS))] + rng.normal(0, 10, 3))
    occluder = (rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.7), rng.uniform(0.15, 0.3), _occluder_colour(rng))
    return Nuisance(
        pose=pose, scale=math.exp(rng.normal(0, 0.06 * k)), shift=rng.normal(0, 0.025 * k, 2),
        smile=float(np.clip(rng.normal(0.2, 0.5 * k), -0.6, 1.0)), mouth_open=max(0.0, rng.normal(-0.02, 0.06 * k)),
        blink=float(np.clip(1 - abs(rng.normal(0, 0.35 * k)), 0.1, 1.0)), brow_up=rng.normal(0, 0.02 * k),
        gaze=np.clip(rng.normal(0, 0.25 * k, 2), -0.5, 0.5),
        blur=blur if blur > 0.2 else 0.0, low_res=low_res, jpeg=jpeg,
        noise=abs(rng.normal(0, 4 * k)) + 0.5, mask_colour=mask_colour, mask_top=rng.uniform(0.35, 0.7),
        occluder=occluder if rng.uniform() < 0.08 * k else None,
    )


def _occluder_colour(rng: np.random.Generator) -> Colour:
    """Half hands (skin tones), half random objects."""
    hand = _mix(SKIN, rng, 10)
    thing = rng.uniform(0, 255, 3)
    return _rgb(hand if rng.uniform() < 0.5 else thing)


@dataclass(frozen=True, eq=False)
class Rendered:
    """One rendered face."""

    image: np.ndarray  # (112, 112, 3) uint8 RGB
    landmarks: np.ndarray  # (5, 2) float32 x, y: eye (image left), eye (image right), nose tip, mouth corners
    yaw: float
    blur: float
    masked: bool


def render(
    p: Identity, rng: np.random.Generator, *, nuisance: float = 1.0, mask: bool = False,
    session: Session | None = None, yaw: float | None = None,
) -> Rendered:
    """Render identity ``p`` with nuisance drawn from ``rng``.

    ``nuisance`` scales every per-image nuisance. With ``session`` the background, lighting and
    base pose are shared (small pose jitter only); ``yaw`` overrides the drawn yaw.
    """
    k = nuisance
    jitter = 0.0 if session is None else 0.05 * k
    session = sample_session(rng, k) if session is None else session
    nz = sample_nuisance(rng, k, session, jitter, yaw)
    cam = _Camera(p, nz.pose, nz.scale, nz.shift)
    canvas = Image.new("RGB", (CANVAS, CANVAS), _rgb(session.background))
    draw = ImageDraw.Draw(canvas)
    _draw_head(draw, cam, p, session)
    _draw_facial_hair(ImageDraw.Draw(canvas, "RGBA"), cam, p)  # RGBA blends; 7x slower, so only here
    landmarks = _draw_features(draw, cam, p, nz)
    if mask:
        _draw_mask(draw, cam, p, nz)
    if nz.occluder is not None:
        _draw_occluder(draw, cam, nz.occluder)
    image = _finish(np.asarray(canvas), cam, p, session, nz, rng)
    # canvas pixel centres are integers: output coordinate = (X + 0.5) / SS - 0.5
    return Rendered(image, ((landmarks + 0.5) / SS - 0.5).astype(np.float32), float(nz.pose[0]), nz.blur, mask)


def _rgb(colour: Any, factor: float = 1.0) -> Colour:
    """An RGB tuple for Pillow, scaled and clipped (plain Python: called ~30 times per image)."""
    return tuple(int(min(255.0, max(0.0, float(v) * factor))) for v in colour)


def _flat(points: np.ndarray) -> list[float]:
    """(N, 2) canvas points -> [x0, y0, x1, y1, ...] as Pillow wants them."""
    return np.asarray(points, dtype=np.float64).ravel().tolist()


def _ellipse(draw: ImageDraw.ImageDraw, centre: np.ndarray, rx: float, ry: float, fill: Colour) -> None:
    cx, cy = float(centre[0]), float(centre[1])
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) rotation: yaw about y, then pitch about x, then roll about z."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


class _Camera:
    """Orthographic camera from face coordinates to canvas pixels."""

    def __init__(self, p: Identity, pose: np.ndarray, scale: float, shift: np.ndarray) -> None:
        self.a, self.b = p["fw"] * 1.05, p["fh"] * 1.1  # semi-axes of the face surface ellipsoid
        self.rot = _rotation(*pose)
        self.unit = CANVAS * 0.58 * scale
        self.centre = np.array([CANVAS / 2 + shift[0] * CANVAS, CANVAS * 0.52 + shift[1] * CANVAS])
        self._to_canvas = self.rot[:2].T * self.unit  # (3, 2): rotate, drop z, scale to pixels

    def depth(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z of the face surface above (x, y)."""
        u = (x / self.a) ** 2 + (y / self.b) ** 2
        return HEAD_DEPTH * np.sqrt(np.maximum(1 - u, 0))

    def project(self, xy: Any, z: Any = None) -> np.ndarray:
        """(N, 2) face points (on the surface unless ``z`` is given) -> (N, 2) canvas pixels."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        xyz = np.empty((len(xy), 3))
        xyz[:, :2] = xy
        xyz[:, 2] = self.depth(xy[:, 0], xy[:, 1]) if z is None else z
        return xyz @ self._to_canvas + self.centre

    def hull(self, xy: np.ndarray) -> list[float]:
        """Outline of a surface region given by sample points: convex hull of their projection."""
        pts = self.project(xy).astype(np.float32)
        return _flat(cv2.convexHull(pts)[:, 0, :])

    def silhouette(self, centre: tuple[float, ...], axes: tuple[float, ...], n: int = 40) -> list[float]:
        """Outline of an ellipsoid: the projected ellipse L @ circle with L L^T = (R A^2 R^T)[:2, :2]."""
        q = self.rot @ np.diag(np.square(axes)) @ self.rot.T
        chol = np.linalg.cholesky(q[:2, :2])
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        ring = np.stack([np.cos(t), np.sin(t)], 1) @ chol.T * self.unit  # (n, 2)
        return _flat(self.project([centre[:2]], centre[2]) + ring)

    def px(self, r: float) -> float:
        return r * self.unit


def _outline(p: Identity, n: int = 48) -> np.ndarray:
    """(n, 2) face outline: ellipse with cheeks, narrowing jaw and a pointed chin."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    s, c = np.sin(t), np.cos(t)
    lower = np.clip(s, 0, 1)
    w = p["fw"] * (1 + p["cheek"] * np.exp(-((s - 0.25) / 0.3) ** 2)) * (1 - (1 - p["jaw"]) * lower ** 2)
    y = p["fh"] * s + p["chin"] * 0.25 * lower ** 6 * np.clip(1 - np.abs(c) / 0.3, 0, 1)
    return np.stack([w * c, y], 1)


def _region(p: Identity, below: Any, scale: float = 1.0, n: int = 23) -> np.ndarray:
    """(N, 2) sample points of the face inside its outline and below the curve y = below(x)."""
    outline = _outline(p) * scale
    xs = np.linspace(-1.1, 1.1, n) * p["fw"] * scale
    pts = np.concatenate([outline * s for s in RING_SCALES] + [np.stack([xs, below(xs)], 1)])
    angle = np.arctan2(outline[:, 1], outline[:, 0])
    order = np.argsort(angle)
    radius = np.interp(np.arctan2(pts[:, 1], pts[:, 0]), angle[order], np.hypot(*outline.T)[order], period=2 * np.pi)
    inside = np.hypot(*pts.T) <= radius * (1 + 1e-6)
    return pts[inside & (pts[:, 1] >= below(pts[:, 0]) - 1e-9)]


def _hairline(p: Identity, x: np.ndarray) -> np.ndarray:
    """y of the hairline (with fringe and parting) above x; the forehead is below it."""
    fw = p["fw"]
    part = 0.05 * np.exp(-((x - p["part"] * fw) / 0.12) ** 2)
    return p["hairline"] + p["fringe"] + 0.18 * (x / fw) ** 2 - part


def _draw_head(draw: ImageDraw.ImageDraw, cam: _Camera, p: Identity, session: Session) -> None:
    """Background, hair behind the head, body, ears, skull and the bare face."""
    for x, y, r, colour in session.blobs:
        _ellipse(draw, np.array([x, y]), r, r, colour)
    hair, skin, fw, fh = _rgb(p["hair"]), p["skin"], p["fw"], p["fh"]
    style = p["hair_style"]
    if style in (2, 3, 4):  # long hair, bob and curls fall behind the head
        length, width = {2: (1.55, 1.25), 3: (0.85, 1.25), 4: (0.9, 1.45)}[style]
        back = [(-fw * width, -0.3), (-fw * width * 1.02, length), (fw * width * 1.02, length), (fw * width, -0.3)]
        draw.polygon(_flat(cam.project(back, -0.4)), fill=hair)
    body = [(-1.6, 1.55), (-0.5, 1.05), (0.5, 1.05), (1.6, 1.55), (1.7, 2.4), (-1.7, 2.4)]
    draw.polygon(_flat(cam.project(body, -0.3)), fill=session.cloth)
    neck = [(-fw * 0.55, 0.4), (-fw * 0.5, 1.25), (fw * 0.5, 1.25), (fw * 0.55, 0.4)]
    draw.polygon(_flat(cam.project(neck, -0.2)), fill=_rgb(skin, 0.82))
    for sign in (-1, 1):
        ear = cam.project([(sign * fw * 0.98, p["eye_y"] + 0.08)], -0.15)[0]
        _ellipse(draw, ear, cam.px(p["ear"] * 0.5), cam.px(p["ear"]), _rgb(skin, 0.9))
    if style == 0:
        draw.polygon(cam.silhouette((0, -fh * 0.3, -0.25), (fw * 1.0, fh * 0.72, 0.95)), fill=_rgb(skin, 0.96))
        draw.polygon(cam.hull(_region(p, lambda x: np.full_like(x, -10.0))), fill=_rgb(skin))
        return
    big = 1.16 if style == 4 else 1.0
    draw.polygon(cam.silhouette((0, -fh * 0.3, -0.25), (fw * 1.12 * big, fh * 0.8 * big, 1.0)), fill=hair)
    draw.polygon(cam.hull(_region(p, lambda x: _hairline(p, x))), fill=_rgb(skin))


def _draw_features(draw: ImageDraw.ImageDraw, cam: _Camera, p: Identity, nz: Nuisance) -> np.ndarray:
    """Skin marks, eyes, nose, mouth and glasses; returns (5, 2) canvas landmarks."""
    _draw_marks(draw, cam, p)
    eyes = np.stack([_draw_eye(draw, cam, p, nz, sign) for sign in (-1, 1)])
    nose = _draw_nose(draw, cam, p, nz)
    mouth = _draw_mouth(draw, cam, p, nz)
    if p["glasses"]:
        _draw_glasses(draw, cam, p)
    return np.concatenate([eyes, nose[None], mouth])


def _draw_facial_hair(draw: ImageDraw.ImageDraw, cam: _Camera, p: Identity) -> None:
    """Semi-transparent beard (lower face) and moustache."""
    hair = _rgb(p["hair"])
    if p["beard"] > 0:
        region = _region(p, lambda x: np.full_like(x, p["mouth_y"] - 0.12), scale=1.01)
        draw.polygon(cam.hull(region), fill=hair + (int(255 * p["beard"]),))
    if p["moustache"] > 0:
        my, mw = p["mouth_y"] - p["lip_up"] - 0.04, p["mouth_w"] * 1.1
        shape = [(-mw, my + 0.05), (0, my - 0.03), (mw, my + 0.05), (0, my + 0.03)]
        draw.polygon(_flat(cam.project(shape)), fill=hair + (int(255 * p["moustache"]),))


def _draw_marks(draw: ImageDraw.ImageDraw, cam: _Camera, p: Identity) -> None:
    """Moles and freckles: stable per identity."""
    spots = [(mx * p["fw"], my, r, 0.45) for mx, my, r in p["moles"]]
    if p["freckles"]:
        fr = np.random.default_rng(p["freck_seed"])
        spots += [(fr.uniform(-0.4, 0.4), fr.uniform(0.0, 0.25), 0.008, 0.75) for _ in range(25)]
    for x, y, r, shade in spots:
        _ellipse(draw, cam.project([(x, y)])[0], cam.px(r), cam.px(r), _rgb(p["skin"], shade))


def _draw_eye(draw: ImageDraw.ImageDraw, cam: _Camera, p: Identity, nz: Nuisance, sign: int) -> np.ndarray:
    """Eye white, iris, pupil, upper lid and brow; returns the eye centre (canvas)."""
    ew, ex, ey = p["eye_w"], sign * p["eye_dx"], p["eye_y"]
    eh = ew * p["eye_h"] * nz.blink
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    lid = ey + eh * np.sin(t) * np.where(np.sin(t) < 0, 1.0, 0.7) - sign * p["eye_tilt"] * 0.05 * np.cos(t)
    pts = np.stack([ex + ew * np.cos(t), lid], 1)
    draw.polygon(_flat(cam.project(pts)), fill=(235, 232, 225))
    iris_z = cam.depth(np.array([ex]), np.array([ey])) + 0.02
    iris = cam.project([(ex + nz.gaze[0] * ew * 0.4, ey + nz.gaze[1] * eh * 0.3)], iris_z)[0]
    corners = cam.project([(ex - ew, ey), (ex + ew, ey)])
    squash = min(1.0, float(np.linalg.norm(corners[1] - corners[0])) / cam.px(2 * ew))  # foreshortening
    r, rv = cam.px(ew * p["iris_r"]), min(cam.px(ew * p["iris_r"]), cam.px(eh) * 1.05)
    _ellipse(draw, iris, r * squash, rv, _rgb(p["iris"]))
    _ellipse(draw, iris, r * 0.45 * squash, min(r * 0.45, rv), (10, 10, 10))
    upper = np.concatenate([pts[8:16], pts[:1]])
    draw.line(_flat(cam.project(upper)), fill=_rgb(p["skin"], 0.35), width=max(1, int(cam.px(0.018))))
    bx = np.linspace(-1, 1, 5)
    by = ey - p["brow_dy"] - nz.brow_up - p["brow_arch"] * (1 - bx ** 2) + p["brow_ang"] * 0.06 * bx * sign
    brow = _rgb(p["hair"]) if p["hair_style"] != 0 else _rgb(p["skin"], 0.4)
    draw.line(_flat(cam.project(np.stack([ex + bx * ew * p["brow_len"], by], 1))), fill=brow,
              width=max(1, int(cam.px(p["brow_th"]))), joint="curve")
    return cam.project([(ex, ey)])[0]


def _draw_nose(draw: ImageDraw.ImageDraw, cam: _Camera, p: Identity, nz: Nuisance) -> np.ndarray:
    """Bridge shadow, tip and nostrils; returns the tip (canvas)."""
    top = p["eye_y"] + 0.05
    bottom, nd, nw, skin = top + p["nose_len"], p["nose_depth"], p["nose_w"], p["skin"]
    tip = cam.project([(0, bottom - 0.03)], HEAD_DEPTH + nd)[0]
    base = [(0, top), (-nw * 0.3, top), (nw * 0.3, top), (-nw * 0.6, bottom), (nw * 0.6, bottom)]
    wings = cam.project([(-nw * 0.6, bottom), (nw * 0.6, bottom)], HEAD_DEPTH + nd * 0.4)
    body = np.concatenate([cam.project(base), wings, tip[None]]).astype(np.float32)
    draw.polygon(_flat(cv2.convexHull(body)[:, 0, :]), fill=_rgb(skin))  # only visible off-frontal
    side = 1 if nz.pose[0] < 0 else -1  # the shadow falls on the side turned away
    bridge_z = np.array([0.78, HEAD_DEPTH + nd * 0.6])
    bridge = cam.project([(side * nw * 0.4, top), (side * nw * 0.7, bottom - 0.06)], bridge_z)
    draw.line(_flat(bridge), fill=_rgb(skin, 0.78), width=max(1, int(cam.px(0.02))))
    r = cam.px(nw * 0.55)
    _ellipse(draw, tip, r, r * 0.8, _rgb(skin, 1.04))
    for sign in (-1, 1):
        nostril = cam.project([(sign * nw * 0.55, bottom)], HEAD_DEPTH + nd * 0.4)[0]
        rr = cam.px(nw * 0.22)
        _ellipse(draw, nostril, rr, rr * 0.6, _rgb(skin, 0.45))
    return tip


def _draw_mouth(draw: ImageDraw.ImageDraw, cam: _Camera, p: Identity, nz: Nuisance) -> np.ndarray:
    """Lips (with smile and open mouth); returns (2, 2) mouth corners (canvas)."""
    my, mw = p["mouth_y"], p["mouth_w"] * (1 + 0.15 * nz.smile)
    mo = nz.mouth_open
    xs = np.linspace(-1, 1, 9)
    curve = -nz.smile * 0.05 * xs ** 2
    mid = np.stack([xs * mw, my + curve], 1)
    bow = 1 + 0.3 * np.exp(-(xs / 0.25) ** 2)
    upper = np.stack([xs * mw, my + curve - p["lip_up"] * (1 - xs ** 4) * bow], 1)
    lower = np.stack([xs * mw, my + curve + mo + p["lip_lo"] * (1 - xs ** 2)], 1)
    if mo > 0.01:
        draw.polygon(_flat(cam.project(np.concatenate([mid, (mid + [0, mo])[::-1]]))), fill=(50, 20, 20))
        teeth = np.concatenate([mid[2:7], (mid[2:7] + [0, min(mo, 0.03)])[::-1]])
        draw.polygon(_flat(cam.project(teeth)), fill=(235, 230, 220))
    draw.polygon(_flat(cam.project(np.concatenate([upper, mid[::-1]]))), fill=_rgb(p["lip"]))
    draw.polygon(_flat(cam.project(np.concatenate([mid + [0, mo], lower[::-1]]))), fill=_rgb(p["lip"], 1.1))
    draw.line(_flat(cam.project(mid)), fill=_rgb(p["lip"], 0.5), width=max(1, int(cam.px(0.01))))
    return cam.project(mid[[0, -1]])


def _draw_glasses(draw: ImageDraw.ImageDraw, cam: _Camera, p: Identity) -> None:
    colour = _rgb(p["glass_col"])
    rim = max(1, int(cam.px(0.025)))
    squash = abs(cam.rot[0, 0])  # lens planes face the camera only when frontal
    rx, ry = cam.px(p["eye_w"] * 1.5) * squash, cam.px(p["eye_w"] * 1.15)
    inner = []
    for sign in (-1, 1):
        c = cam.project([(sign * p["eye_dx"], p["eye_y"])], 0.9)[0]
        draw.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], outline=colour, width=rim)
        inner += [c[0] - sign * rx, c[1]]
    draw.line(inner, fill=colour, width=max(1, int(cam.px(0.02))))


def _draw_mask(draw: ImageDraw.ImageDraw, cam: _Camera, p: Identity, nz: Nuisance) -> None:
    """Surgical mask over the lower face, from partway down the nose, with ear straps."""
    top = p["eye_y"] + 0.05 + p["nose_len"] * nz.mask_top
    region = _region(p, lambda x: np.full_like(x, top), scale=1.03)
    peak = np.array([[0.0, top - 0.06]])  # over the nose bridge
    draw.polygon(cam.hull(np.concatenate([region, peak])), fill=nz.mask_colour)
    for sign in (-1, 1):
        strap = [(sign * p["fw"], top + 0.05), (sign * p["fw"] * 0.98, p["eye_y"] + 0.08)]
        draw.line(_flat(cam.project(strap, -0.1)), fill=_rgb(nz.mask_colour, 0.9), width=max(1, int(cam.px(0.015))))


def _draw_occluder(draw: ImageDraw.ImageDraw, cam: _Camera, occluder: tuple[float, float, float, Colour]) -> None:
    """A hand or object in front of part of the face."""
    x, y, r, colour = occluder
    centre = cam.project([(x, y)], HEAD_DEPTH + 0.3)[0]
    _ellipse(draw, centre, cam.px(r), cam.px(r * 1.3), colour)


@functools.cache
def _shading_grid() -> tuple[np.ndarray, np.ndarray]:
    """(2, 56, 56) output-pixel coordinates of a half-resolution grid (shading is smooth)."""
    step = 2
    yy, xx = np.mgrid[0:OUT:step, 0:OUT:step].astype(np.float32) + np.float32((step - 1) / 2)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


@functools.cache
def _noise_bank() -> np.ndarray:
    """(176, 176, 3) fixed standard normals; each image adds a random crop of it.

    Drawing 37k fresh normals per image cost more than the drawing itself; a crop at a
    random offset, flipped and channel-rolled, is as good a sensor-noise nuisance.
    """
    bank = np.random.default_rng(20251122).standard_normal((OUT + 64, OUT + 64, 3), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def _shading(cam: _Camera, p: Identity, session: Session) -> np.ndarray:
    """(112, 112) gain: Lambert on an ellipsoid over the head, a brightness ramp elsewhere."""
    yy, xx = _shading_grid()
    unit = cam.unit / SS
    u = (xx - np.float32(cam.centre[0] / SS)) / np.float32(unit * p["fw"] * 1.15)
    v = (yy - np.float32(cam.centre[1] / SS)) / np.float32(unit * p["fh"] * 1.2)
    r2 = u * u + v * v
    normal_z = np.sqrt(np.maximum(1 - r2, 0))
    lx, ly, lz = (float(c) for c in session.light)
    lambert = np.minimum(np.maximum(u * lx + v * ly + normal_z * lz, 0), 1)
    face = session.ambient + (1 - session.ambient) * 1.1 * lambert
    ramp = 1 + session.ramp[0] * (xx - OUT / 2) / OUT + session.ramp[1] * (yy - OUT / 2) / OUT
    weight = np.minimum(np.maximum((1 - r2) * 4, 0), 1)
    gain = (weight * face + (1 - weight) * ramp).astype(np.float32)
    return cv2.resize(gain, (OUT, OUT), interpolation=cv2.INTER_LINEAR)


def _finish(canvas: np.ndarray, cam: _Camera, p: Identity, session: Session, nz: Nuisance,
            rng: np.random.Generator) -> np.ndarray:
    """Downsample, light, colour-cast, degrade and add noise: (224, 224, 3) -> (112, 112, 3) uint8."""
    img = cv2.resize(canvas, (OUT, OUT), interpolation=cv2.INTER_AREA)
    gain = (session.cast * session.exposure / 255.0).astype(np.float32)  # (3,)
    lit = img * _shading(cam, p, session)[..., None] * gain  # (112, 112, 3) in 0..1
    gamma_lut = (np.linspace(0, 1, 256) ** session.gamma * 255).astype(np.uint8)
    img = cv2.LUT(np.clip(lit * 255, 0, 255).astype(np.uint8), gamma_lut)
    if nz.low_res:
        side = max(16, int(OUT * nz.low_res))
        small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (OUT, OUT), interpolation=cv2.INTER_LINEAR)
    if nz.blur:
        img = cv2.GaussianBlur(img, (0, 0), nz.blur)
    if nz.jpeg:
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, nz.jpeg])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    oy, ox, flip, roll = rng.integers(0, 65), rng.integers(0, 65), rng.integers(0, 2), rng.integers(0, 3)
    noise = np.roll(_noise_bank()[oy:oy + OUT, ox:ox + OUT][:, :: 1 - 2 * flip], roll, axis=2)
    noisy = img + noise * np.float32(nz.noise)
    return np.clip(noisy, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ImageSpec:
    """Everything that determines one image: the random keys and the render settings.

    Keys are ``np.random.default_rng`` seeds ``(seed, stream, identity, ...)``, so an image is the
    same whichever process renders it, and in whatever order.
    """

    identity: tuple[int, ...]  # seeds the identity parameters
    key: tuple[int, ...]  # seeds the per-image nuisance
    nuisance: float
    mask: bool = False
    yaw: float | None = None
    session: tuple[int, ...] | None = None  # seeds the shared session of a media


@dataclass(frozen=True, eq=False)
class Shot:
    """One rendered and encoded image with what the IJB files need."""

    jpeg: bytes
    landmarks: np.ndarray  # (5, 2) float32
    faceness: float  # in (0.5, 1]: lower for turned or blurred faces, like a detector's score


def faceness(rendered: Rendered) -> float:
    """A detector-like confidence: high for frontal, sharp faces."""
    score = 1.0 - 0.3 * min(abs(rendered.yaw), 1.0) - 0.1 * min(rendered.blur, 1.5) / 1.5
    return float(min(1.0, max(0.51, score)))


def render_specs(job: tuple[int, list[ImageSpec]]) -> list[Shot]:
    """Render and JPEG-encode a batch of specs: ``(quality, specs)`` -> shots (a pool task)."""
    quality, specs = job
    identities: dict[tuple[int, ...], Identity] = {}
    shots = []
    for spec in specs:
        if spec.identity not in identities:
            identities[spec.identity] = sample_identity(np.random.default_rng(list(spec.identity)))
        session = None
        if spec.session is not None:
            session = sample_session(np.random.default_rng(list(spec.session)), spec.nuisance)
        rendered = render(identities[spec.identity], np.random.default_rng(list(spec.key)), nuisance=spec.nuisance,
                          mask=spec.mask, session=session, yaw=spec.yaw)
        shots.append(Shot(encode_jpeg(rendered.image, quality), rendered.landmarks, faceness(rendered)))
    return shots


def init_worker() -> None:
    """Pool initializer: one OpenCV thread per process, so ``workers`` processes use ``workers`` cores."""
    cv2.setNumThreads(1)
