"""Headless Debian Chromium with no network, for the tests that look at a page the way a person does.

Every request goes to a closed local port (file:// pages need none), and Chromium's own background
traffic is switched off, so a page that still draws has nothing to fetch.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")


def _browser(profile: Path, width: int, height: int) -> list[str]:
    return ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--virtual-time-budget=15000",
            f"--window-size={width},{height}"]


def dump_dom(page: Path, profile: Path, width: int = 1000, height: int = 1400) -> str:
    """The page's DOM after its scripts ran."""
    cmd = [*_browser(profile, width, height), "--dump-dom", page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout


def screenshot(page: Path, shot: Path, width: int = 1000, height: int = 1400) -> np.ndarray:
    """The rendered page as an H x W x 3 uint8 array (also left at `shot` for a person to look at)."""
    cmd = [*_browser(shot.parent / "profile", width, height), f"--screenshot={shot}", page.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=180)
    assert shot.is_file(), f"chromium wrote no screenshot of {page}"
    return np.asarray(Image.open(shot).convert("RGB"))


def inked(pixels: np.ndarray) -> float:
    """Share of pixels that are not (near) white: a blank page or a missing image is close to 0."""
    return float((pixels.min(axis=2) < 200).mean())
