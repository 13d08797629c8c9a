"""Mixed precision: what ``auto`` resolves to, and stages of one process that each use their own
precision (the pipeline, a notebook), with the precision every record states."""

import json
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

from cfgen.classifier.config import ClassifierConfig
from cfgen.classifier.training import train_classifiers
from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.datasets.colored_mnist.rendering import ColoredMNISTConfig, make_colored_mnist
from cfgen.errors import CfgenError
from cfgen.generator.model import CONFIG_FILE
from cfgen.generator.training import train_generator
from cfgen.io import RUN_FILE
from cfgen.runtime import AUTO_PRECISION_VARIABLE, fastest_precision, make_accelerator, resolve_mixed_precision

pytestmark = pytest.mark.trains


def test_auto_follows_the_host_unless_the_variable_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTO_PRECISION_VARIABLE, raising=False)
    assert resolve_mixed_precision("auto") == fastest_precision()
    assert resolve_mixed_precision("no") == "no" and resolve_mixed_precision("bf16") == "bf16"
    monkeypatch.setenv(AUTO_PRECISION_VARIABLE, "bf16")
    assert resolve_mixed_precision("auto") == "bf16"
    assert resolve_mixed_precision("no") == "no"  # an explicit choice wins
    monkeypatch.setenv(AUTO_PRECISION_VARIABLE, "fp8")
    with pytest.raises(CfgenError, match=f"{AUTO_PRECISION_VARIABLE}='fp8' is not a precision; valid: no, fp16, bf16"):
        resolve_mixed_precision("auto")
    with pytest.raises(CfgenError, match="unknown mixed precision 'half'; valid: auto, no, fp16, bf16"):
        resolve_mixed_precision("half")


def test_accelerators_of_different_precisions_follow_each_other() -> None:
    assert make_accelerator("no").mixed_precision == "no"
    assert make_accelerator("bf16").mixed_precision == "bf16"
    assert AcceleratorState().mixed_precision == "bf16"
    assert make_accelerator("bf16").mixed_precision == "bf16"  # the same precision keeps the state
    assert make_accelerator("no").mixed_precision == "no"


def test_stages_in_one_process_each_use_and_record_their_precision(tmp_path: Path) -> None:
    sizes = {"train": 64, "validation": 32, "test": 32, "test_anti": 16}
    data = make_colored_mnist(ColoredMNISTConfig(0.9, sizes=sizes, seed=0), tmp_path / "data")

    def classifier(name: str, precision: str) -> dict:
        config = ClassifierConfig(
            data=str(data), method="erm", out=str(tmp_path / name), spurious=("fg_color",), epochs=1,
            mixed_precision=precision, progress=False,
        )  # fmt: skip
        metrics = train_classifiers(config)
        assert json.loads((tmp_path / name / RUN_FILE).read_text())["mixed_precision"] == precision
        return metrics

    assert classifier("erm-fp32", "no")["mixed_precision"] == "no"

    generator = train_generator(data, tmp_path / "gen", preset="tiny", mixed_precision="bf16")
    assert json.loads((generator / CONFIG_FILE).read_text())["training"]["mixed_precision"] == "bf16"
    assert json.loads((generator / RUN_FILE).read_text())["mixed_precision"] == "bf16"

    counterfactuals = generate_counterfactuals(
        data, "fg_color=random", tmp_path / "cf", generator=generator, split="train", limit=4, steps=2,
        mixed_precision="bf16", progress=False,
    )  # fmt: skip
    assert json.loads((counterfactuals / RUN_FILE).read_text())["mixed_precision"] == "bf16"

    assert classifier("erm-after", "no")["mixed_precision"] == "no"
