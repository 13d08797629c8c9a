"""The meter recovers the strength that generated a built-in dataset, within its interval."""

from pathlib import Path

import numpy as np
import pytest
from scipy.stats.contingency import association

from cfgen.confounding import measure
from cfgen.data.table import read_imagefolder
from cfgen.datasets.colored_mnist.rendering import ColoredMNISTConfig, make_colored_mnist, population_joint


@pytest.mark.parametrize("strength", [0.0, 0.5, 0.9, 0.99])
def test_measured_association_matches_the_mechanism(tmp_path: Path, strength: float) -> None:
    config = ColoredMNISTConfig(strength=strength, sizes={"train": 1500, "validation": 0, "test": 0, "test_anti": 0})
    joint = population_joint(config, "digit", "fg_color")
    implied = float(association(np.rint(joint * 1e9).astype(np.int64), method="cramer")) if strength else 0.0
    assert implied == pytest.approx(strength, abs=1e-6)  # 10 digits x 10 colours: V equals the strength
    table = read_imagefolder(make_colored_mnist(config, tmp_path / "data"))
    report = measure(table, table.schema(), n_bootstrap=400)
    pair = next(p for p in report["pairs"] if {p["a"], p["b"]} == {"digit", "fg_color"})
    assert pair["ci_low"] <= implied <= pair["ci_high"]
    assert pair["ci_high"] - pair["ci_low"] < 0.15
    untied = next(p for p in report["pairs"] if {p["a"], p["b"]} == {"digit", "thickness"})
    assert untied["ci_low"] <= 0.0 + 1e-9
