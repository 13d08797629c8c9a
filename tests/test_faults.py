"""Crashes: a training process killed with SIGKILL (no clean-up runs) and started again ends where an
uninterrupted run ends, and leaves nothing of the dead process behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_folder
from safetensors.torch import load_file

from cfgen.classifier.training import WEIGHTS_FILE
from cfgen.cli import main
from cfgen.generator.training import train_generator


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        {"y": str(y), "color": color, "shape": shape, "split": split}
        for split in ("train", "validation")
        for y in range(3)
        for color in ("red", "green")
        for shape in "abc"
        for _ in range(2 if split == "train" else 1)
    ]
    return write_folder(tmp_path_factory.mktemp("data") / "d", rows)


def start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cfgen", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def kill_when(process: subprocess.Popen, ready, timeout: float = 240) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds; fails if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run never reached the point to kill it at"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def test_a_killed_generator_run_resumes_to_the_uninterrupted_weights(dataset: Path, tmp_path: Path) -> None:
    """Killed after its first checkpoint, resumed: bitwise the weights of a run never stopped (same seed).

    The tolerance is 0: each epoch's batch order follows from its number and the checkpoint holds
    how many batches of it were drawn, so the resumed run sees the same batches and noise.
    """
    options = {"label": "y", "preset": "tiny", "steps": 16, "checkpoint_every": 4, "mixed_precision": "no"}
    whole = train_generator(dataset, tmp_path / "whole", **options)

    out = tmp_path / "killed"
    argv = ["train-generator", "--data", str(dataset), "--out", str(out),
            *[f"--{k.replace('_', '-')}={v}" for k, v in options.items()]]  # fmt: skip
    kill_when(start(argv), lambda: (out / "checkpoints" / "checkpoint-4").is_dir())
    assert not (out / "cfgen_generator.json").exists()
    train_generator(dataset, out, **options, resume=True)

    unet = Path("unet") / "diffusion_pytorch_model.safetensors"
    expected, resumed = load_file(whole / unet), load_file(out / unet)
    assert all((expected[name] == resumed[name]).all() for name in expected)


def test_a_killed_classifier_run_leaves_nothing_and_reruns_to_the_same_model(dataset: Path, tmp_path: Path) -> None:
    argv = ["train-classifier", "--data", str(dataset), "--label", "y", "--method", "erm", "--epochs", "10",
            "--batch-size", "4", "--mixed-precision", "no"]  # fmt: skip
    whole = tmp_path / "whole"
    assert main([*argv, "--out", str(whole)]) == 0

    out = tmp_path / "killed"
    kill_when(start([*argv, "--out", str(out)]), lambda: any(tmp_path.glob(".killed.partial-*")))
    assert not out.exists() and len(list(tmp_path.glob(".killed.partial-*"))) == 1  # what a SIGKILL leaves
    assert main([*argv, "--out", str(out)]) == 0
    assert not list(tmp_path.glob(".killed.partial-*"))  # the dead process's folder is gone
    expected, rerun = load_file(whole / "seed-0" / WEIGHTS_FILE), load_file(out / "seed-0" / WEIGHTS_FILE)
    assert all((expected[name] == rerun[name]).all() for name in expected)
