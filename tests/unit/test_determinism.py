"""Training's deterministic-kernels switch: set for the run, restored after, no inductor import."""
from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys, torch
from facekd.training.runtime import deterministic_kernels
with deterministic_kernels({enabled}):
    inside = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
after = torch.are_deterministic_algorithms_enabled()
print(inside, after, "torch._inductor.config" in sys.modules)
"""


@pytest.mark.parametrize("enabled", [True, False])
def test_determinism_is_scoped_and_does_not_import_the_inductor(enabled: bool) -> None:
    # A fresh interpreter: another test may already have imported the inductor in this one.
    out = subprocess.run([sys.executable, "-c", CHECK.format(enabled=enabled)], capture_output=True, text=True,
                         check=True).stdout.split("\n")[-2]
    assert out == f"({enabled}, True) False False"


def test_determinism_also_reaches_an_imported_inductor() -> None:
    import torch
    import torch._inductor.config as inductor_config

    from facekd.training.runtime import deterministic_kernels

    with deterministic_kernels(True):
        assert torch.are_deterministic_algorithms_enabled() and inductor_config.deterministic
    assert not torch.are_deterministic_algorithms_enabled() and not inductor_config.deterministic
