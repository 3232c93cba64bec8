"""`facekd data info` on the prepared evaluation folder (issue 19.11): its benchmarks, not "a folder
of 2 classes"."""
from __future__ import annotations

from pathlib import Path

from facekd.data.bins import write_bin
from facekd.data.info import describe
from tests.unit.test_data_info import jpeg, put


def test_data_info_describes_an_evaluation_folder(tmp_path: Path) -> None:
    root = tmp_path / "eval"
    write_bin(root / "synth_lfw.bin", [jpeg(16, 16)] * 4, [True, False])
    for part in ("probes", "gallery"):
        for person in ("a", "b"):
            put(root / "mfr" / part / person / "0.jpg", jpeg())
    summary = describe(root)
    assert summary["format"] == "eval"
    assert summary["verification"]["synth_lfw"]["pairs"] == 2
    assert {part: s["num_classes"] for part, s in summary["mfr"].items()} == {"gallery": 2, "probes": 2}
    assert "ijb" not in summary
    assert describe(root / "mfr/probes")["format"] == "folder"  # an identity folder is still one
