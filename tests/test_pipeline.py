"""``cfgen pipeline``: every stage end to end (tiny preset), its report, and its refusals. The run is made
by cfgen installed from a wheel into a fresh virtual environment, as a user without the repository
would install it: the package carries its data."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from PIL import Image

from cfgen.cli import main
from cfgen.generator.config import PRESETS as GENERATOR_PRESETS
from cfgen.pipeline import AWAY_FROM, LOCALIZED, PRESETS
from cfgen.runtime import resolve_mixed_precision

pytestmark = pytest.mark.trains


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_cfgen(tmp_path_factory: pytest.TempPathFactory):
    """``cfgen`` from a wheel (built with the installed setuptools, no network) in a virtual environment
    that reuses this one's packages (torch and the rest), run from outside the repository."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(REPO)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (root / "dist").glob("cfgen-*.whl")
    venv.create(root / "env", system_site_packages=True)  # without pip: this environment's pip installs into it
    python = root / "env" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)  # fmt: skip
    # the judges are cached per user otherwise; the system's editable cfgen must not win over the wheel
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(root / "cache")}
    env.pop("PYTHONPATH", None)

    def cfgen(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "cfgen", *argv], cwd=root, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip

    where = subprocess.run([python, "-c", "import cfgen; print(cfgen.__file__)"], cwd=root, env=env,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert str(root / "env") in where
    return cfgen, root


@pytest.fixture(scope="module")
def run_dir(wheel_cfgen) -> Path:
    cfgen, root = wheel_cfgen
    result = cfgen("pipeline", "--preset", "tiny", "--out", "run")
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run"


def test_the_wheel_builds_the_builtin_data(wheel_cfgen) -> None:
    cfgen, root = wheel_cfgen
    result = cfgen("make-dataset", "colored-mnist", "--out", "digits", "--train-size", "100", "--validation-size",
                   "0", "--test-size", "20", "--test-anti-size", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((root / "digits" / "images").rglob("*.png"))) == 120


def test_every_stage_writes_its_part(run_dir: Path) -> None:
    for part in ("data", "confounding", "generator", "counterfactuals", "exact", "confounding_after"):
        assert (run_dir / part / "run.json").is_file(), part
    assert (run_dir / "generator" / "cfgen_generator.json").is_file()
    for method in ("erm", "cf-reg"):
        assert (run_dir / "classifiers" / method / "metrics.json").is_file()
    cards = [json.loads((run_dir / f / "cfgen_dataset.json").read_text()) for f in ("counterfactuals", "exact")]
    assert all(card["counterfactuals"]["source"] == str((run_dir / "data").resolve()) for card in cards)


def test_metrics_and_report(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["confounding"]["before"] > 0.9  # digit tied to colour at 0.99
    assert set(metrics["classifiers"]) == {"erm", "cf-reg"}
    assert {"test", "test_anti", "validation"} <= set(metrics["classifiers"]["erm"])
    assert 0.0 <= metrics["counterfactual_quality"]["all"]["effectiveness"]["all"] <= 1.0
    report = (run_dir / "report.md").read_text()
    for heading in ("## 1. Confounding", "## 2. Counterfactuals", "## 3. Classifiers"):
        assert heading in report
    assert "| erm |" in report and "| cf-reg |" in report
    assert "Counterfactuals exist for 16 training images" in report  # the tiny preset edits 16 of 160
    cf_reg_run = json.loads((run_dir / "classifiers" / "cf-reg" / "run.json").read_text())
    assert cf_reg_run["config"]["pair_share"] == 0.5
    assert cf_reg_run["config"]["cf_weight"] == PRESETS["tiny"]["cf_weight"] == 30  # not the classifier's 10
    assert "with weight 30 (`cfgen train-classifier --cf-weight 30`)" in report
    assert ".partial" not in report
    used = resolve_mixed_precision("auto")
    assert metrics["mixed_precision"] == {
        "generator": used,
        "generation": used,
        "classifier erm": used,
        "classifier cf-reg": used,
    }
    assert f"Mixed precision used: generator {used}, generation {used}" in report
    chosen = metrics["inference"]["fg_color"]  # the tiny preset's grid: depths 0.6 and 1.0, guidance 3
    assert chosen["inversion_depth"] in (0.6, 1.0) and chosen["guidance"] == 3.0 and chosen["steps"] == 4
    assert "Inference settings chosen on the validation split" in report
    assert f"fg_color: {LOCALIZED[chosen['localize']]}, DDPM inversion" in report  # the tiny grid: DDPM, all masks
    assert f"guidance 3, {AWAY_FROM[chosen['negative']]}" in report  # the tiny grid: either negative
    accuracy = metrics["counterfactual_quality"]["judge_accuracy_on_sources"]
    assert {"digit", "thickness", "fg_color", "bg_color"} <= set(accuracy)
    judged = ", ".join(f"{name} at {value:.3f}" for name, value in accuracy.items())
    assert f"The judges read the source images' {judged}" in report and "| stroke IoU |" in report
    quality = metrics["counterfactual_quality"]["all"]
    kept = quality["preservation"]  # per attribute: the edited one reached, every other kept
    assert "| " + " | ".join(["fg_color", *kept]) + " |" in report
    cells = [f"reached {quality['effectiveness']['fg_color']:.3f}", *(f"kept {value:.3f}" for value in kept.values())]
    assert "| " + " | ".join(cells) + " |" in report
    for group in ("rare", "absent"):  # listed only when they are a part of the edits, not none or all
        rows = metrics["counterfactual_quality"][group]["rows"]
        assert (f"| {group} edits (" in report) == (0 < rows < quality["rows"])
    assert "![examples](examples.png)" in report
    assert metrics["counterfactual_quality"]["soundness_images"] == 4  # the field's figures, of the generator
    assert f"composition (edited to its own values) {quality['composition_l1_1']:.4f}" in report
    assert "| realism (Frechet) |" in report and quality["realism_frechet"] >= 0
    assert Image.open(run_dir / "examples.png").size[0] >= 8 * 4 * 28  # eight sources, at least 4x their 28 px
    assert 0.0 <= metrics["counterfactual_quality"]["all"]["stroke_iou"] <= 1.0
    generated = json.loads((run_dir / "counterfactuals" / "run.json").read_text())["config"]
    assert generated["inversion_depth"] == chosen["inversion_depth"]


def test_existing_run_is_kept_and_bad_input_writes_nothing(run_dir: Path, tmp_path: Path, capsys) -> None:
    before = (run_dir / "report.md").read_text()
    assert main(["pipeline", "--preset", "tiny", "--out", str(run_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run_dir / "report.md").read_text() == before
    data = run_dir / "data"
    assert main(["pipeline", "--data", str(data), "--spurious", "hue", "--out", str(tmp_path / "x")]) == 2
    assert "--spurious 'hue' is not an attribute; valid: fg_color, bg_color, thickness" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_every_preset_names_a_generator_preset_and_every_setting() -> None:
    for name, settings in PRESETS.items():
        assert name in GENERATOR_PRESETS
        assert set(settings) == set(PRESETS["quick"]), name
        grid = {"depths", "guidance", "guidance_starts", "holds", "localize", "inversions", "negatives", "directions",
                "before_guidance"}  # fmt: skip
        assert set(settings["tune"]) == {"sources", *grid}, name
