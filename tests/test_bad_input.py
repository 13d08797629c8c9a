"""The bad-input catalogue: every bad input, through every command that reads it.

Each case breaks a copy of one small dataset (or names an impossible output), runs each command
that reads what was broken, and checks what docs/robustness.md promises: exit code 2, exactly one
``error:`` line naming the problem, no traceback, and nothing new on disk. The matrix runs the
commands in this process (an exception other than cfgen's own would fail the test as a
traceback); `test_the_commands_as_processes` runs a sample as real processes.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import write_folder
from PIL import Image

from cfgen.cli import main
from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.data.table import CARD_FILE
from cfgen.generator.training import train_generator


def rows() -> list[dict]:
    """36 training rows (y x color x shape, each cell present), 6 validation, 6 test; size is continuous."""
    rng = np.random.default_rng(0)
    table = [
        {"y": str(y), "color": color, "shape": shape, "size": f"{rng.normal():.3f}", "split": "train"}
        for y in range(3)
        for color in ("red", "green")
        for shape in ("a", "b", "c")
        for _ in range(2)
    ]
    for split in ("validation", "test"):
        table += [
            {"y": str(i % 3), "color": ("red", "green")[i % 2], "shape": "abc"[i % 3], "size": "0.5", "split": split}
            for i in range(6)
        ]
    return table


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("good") / "data", rows())


@pytest.fixture(scope="module")
def generator(good: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generator") / "gen"
    return train_generator(good, out, label="y", preset="tiny", steps=2, checkpoint_every=0, mixed_precision="no")


@pytest.fixture(scope="module")
def counterfactuals(good: Path, generator: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cf") / "cf"
    return generate_counterfactuals(good, "color=*", out, generator=generator, split="train", limit=4,
                                    steps=2, mixed_precision="no", progress=False)  # fmt: skip


def edit_metadata(folder: Path, edit: Callable[[list[dict]], list[dict]]) -> None:
    path = folder / "metadata.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    table = edit(table)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]) if table else ["file_name", "y"])
        writer.writeheader()
        writer.writerows(table)


def set_value(column: str, value: str) -> Callable[[Path], None]:
    """``value`` in ``column`` of the second training row and the first validation row (read by every command)."""
    return lambda folder: edit_metadata(folder, lambda t: [{**r, column: value} if i in (1, 36) else r
                                                           for i, r in enumerate(t)])  # fmt: skip


def latin_1(folder: Path) -> None:
    path = folder / "metadata.csv"
    path.write_bytes(path.read_bytes().replace(b"red", "roug\xe9".encode("latin-1")))


def one_training_row(folder: Path) -> None:
    edit_metadata(folder, lambda t: [r for i, r in enumerate(t) if r["split"] != "train" or i == 0])


def six_training_rows(folder: Path) -> None:
    """Every label, colour and shape still present, in fewer rows than the tiny preset's batch of 8."""
    edit_metadata(folder, lambda t: [t[i] for i in (0, 8, 16, 20, 28, 34)] + t[36:])


def single_valued_training_color(folder: Path) -> None:
    """color is 'red' on every training row; the card declares both values (so the schema has two)."""
    edit_metadata(folder, lambda t: [{**r, "color": "red"} if r["split"] == "train" else r for r in t])
    (folder / CARD_FILE).write_text(json.dumps({"label": "y", "vocabulary": {"color": ["green", "red"]}}))


def resized_image(folder: Path) -> None:
    Image.new("RGB", (10, 12)).save(folder / "images" / "3.png")


def larger_images(folder: Path) -> None:
    for path in (folder / "images").glob("*.png"):
        Image.open(path).resize((12, 12)).save(path)


# Commands, by what they read: each is a function of (data folder, output path, fixtures) -> argv.
COMMANDS: dict[str, Callable[..., list[str]]] = {
    "measure": lambda d, o, f: ["measure", str(d), "--label", "y", "--out", o, "--bootstrap", "10"],
    "train-generator": lambda d, o, f: ["train-generator", "--data", str(d), "--label", "y", "--out", o,
                                        "--preset", "tiny", "--steps", "2", "--mixed-precision", "no"],
    "train-classifier": lambda d, o, f: ["train-classifier", "--data", str(d), "--label", "y", "--spurious",
                                         "color,size", "--kinds", "size=categorical", "--method", "erm",
                                         "--epochs", "1", "--out", o, "--mixed-precision", "no"],
    "generate": lambda d, o, f: ["generate", "--generator", str(f["generator"]), "--data", str(d),
                                 "--intervene", "color=*", "--out", o, "--ddim-steps", "2", "--limit", "4",
                                 "--mixed-precision", "no"],
    "tune-inference": lambda d, o, f: ["tune-inference", "--generator", str(f["generator"]), "--data", str(d),
                                       "--sources", "4", "--ddim-steps", "2", "--depths", "0.6", "--guidance", "3",
                                       "--judge-steps", "2", "--judge-cache", o],
    "evaluate-counterfactuals": lambda d, o, f: ["evaluate-counterfactuals", "--counterfactuals",
                                                 str(f["counterfactuals"]), "--data", str(d), "--out", o,
                                                 "--judge-steps", "2", "--judge-cache", o + "-judges"],
    "make-dataset": lambda d, o, f: ["make-dataset", "colored-mnist", "--out", o, "--train-size", "40",
                                     "--validation-size", "0", "--test-size", "0", "--test-anti-size", "0"],
    "pipeline": lambda d, o, f: ["pipeline", "--preset", "tiny", "--out", o],
}  # fmt: skip
READ_DATA = ("measure", "train-generator", "train-classifier", "generate", "tune-inference")
TRAIN = ("train-generator", "train-classifier")
WRITE = ("measure", "train-generator", "train-classifier", "generate", "evaluate-counterfactuals", "make-dataset",
         "pipeline")  # fmt: skip

# (case, what it breaks, the commands that read it, a fragment of the one error line)
DATA_CASES = [
    ("no-metadata", lambda f: (f / "metadata.csv").unlink(), READ_DATA, "has no metadata.csv"),
    ("no-file-name", lambda f: edit_metadata(f, lambda t: [{k: v for k, v in r.items() if k != "file_name"}
                                                           for r in t]), READ_DATA, "no 'file_name' column"),
    ("empty", lambda f: edit_metadata(f, lambda t: []), READ_DATA, "empty"),
    ("missing-image", lambda f: (f / "images" / "3.png").unlink(), READ_DATA, "missing"),
    ("corrupt-image", lambda f: (f / "images" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\nno"), READ_DATA,
     "cannot be read"),
    ("mixed-sizes", resized_image, READ_DATA[1:], "pass --resize"),  # the meter reads no pixels
    ("empty-value", set_value("color", ""), READ_DATA, "missing values"),
    ("nan-value", set_value("y", "NaN"), READ_DATA, "missing values"),
    ("latin-1", latin_1, READ_DATA, "is not UTF-8 text: data row 1 holds byte 0xe9"),
    ("infinite-number", set_value("size", "1e400"), ("measure", "train-generator", "generate"),
     "which is not a finite number"),
    ("single-value", lambda f: edit_metadata(f, lambda t: [{**r, "color": "red"} for r in t]),
     ("measure", "train-generator", "train-classifier"), "single value 'red'"),
    ("single-valued-training-rows", single_valued_training_color, TRAIN, "takes the single value 'red' in"),
    ("one-training-row", one_training_row, TRAIN, "'y' takes the single value '0'"),
    ("fewer-rows-than-a-batch", six_training_rows, ("train-generator",), "6 training images are fewer than one batch"),
    ("undeclared-empty-value", lambda f: (single_valued_training_color(f), set_value("color", "")(f)),
     ("measure", "train-generator"), "missing values"),
    ("unseen-value", set_value("color", "blue"), ("generate", "tune-inference"), "'blue' that the generator"),
    ("other-image-size", larger_images, ("generate", "tune-inference"), "pass --resize 8"),
]  # fmt: skip


def blocked_by_a_file(tmp: Path) -> str:
    (tmp / "a-file").write_text("not a folder")
    return str(tmp / "a-file" / "out")


def existing(tmp: Path) -> str:
    (tmp / "existing").mkdir()
    (tmp / "existing" / "keep.txt").write_text("mine")
    return str(tmp / "existing")


OUTPUT_CASES = [
    ("existing", existing, "already exists"),
    ("under-a-file", blocked_by_a_file, "a-file is a file, not a folder"),
    ("proc", lambda tmp: "/proc/cfgen-out", "does not accept new folders"),
]


def snapshot(*folders: Path) -> dict[str, int]:
    """Every file under ``folders`` with its size and modification time: what "nothing written" compares."""
    return {str(p): hash((p.stat().st_size, p.stat().st_mtime_ns)) for f in folders for p in f.rglob("*")}


def assert_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture, *watched: Path) -> None:
    before = snapshot(*watched)
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err and "np.str_" not in errors[0]
    assert snapshot(*watched) == before, f"{argv[0]} wrote or changed files"


@pytest.mark.parametrize(
    ("case", "command"),
    [(case, command) for case, _, commands, _ in DATA_CASES for command in commands],
)
def test_bad_data(case, command, good, generator, counterfactuals, tmp_path, capsys) -> None:
    _, break_it, _, message = next(c for c in DATA_CASES if c[0] == case)
    data = Path(shutil.copytree(good, tmp_path / "data"))
    break_it(data)
    outs = tmp_path / "outs"
    outs.mkdir()
    fixtures = {"generator": generator, "counterfactuals": counterfactuals}
    argv = COMMANDS[command](data, str(outs / "out"), fixtures)
    assert_refused(argv, message, capsys, outs, data, generator)


@pytest.mark.parametrize(("case", "command"), [(case, command) for case, _, _ in OUTPUT_CASES for command in WRITE])
def test_bad_output(case, command, good, generator, counterfactuals, tmp_path, capsys) -> None:
    _, make_out, message = next(c for c in OUTPUT_CASES if c[0] == case)
    out = make_out(tmp_path)
    fixtures = {"generator": generator, "counterfactuals": counterfactuals}
    assert_refused(COMMANDS[command](good, out, fixtures), message, capsys, tmp_path, good)
    if case == "existing":
        assert (tmp_path / "existing" / "keep.txt").read_text() == "mine"


def test_divergence_stops_training_and_leaves_nothing(good, tmp_path, capsys) -> None:
    """A learning rate that sends the weights to infinity: one error naming the step, no folder, no NaN saved."""
    for argv in (
        [*COMMANDS["train-generator"](good, str(tmp_path / "gen"), {}), "--learning-rate", "1e20", "--steps", "8"],
        [*COMMANDS["train-classifier"](good, str(tmp_path / "clf"), {}), "--learning-rate", "1e20", "--epochs", "3"],
    ):
        assert_refused(argv, "training diverged at step", capsys, tmp_path, good)


def test_resume_below_the_reached_step_is_refused(good, tmp_path, capsys) -> None:
    out = tmp_path / "gen"
    train_generator(good, out, label="y", preset="tiny", steps=4, checkpoint_every=2, mixed_precision="no")
    (out / "cfgen_generator.json").unlink()  # as if stopped after the checkpoint at step 4
    argv = [*COMMANDS["train-generator"](good, str(out), {}), "--resume"]  # asks for 2 steps
    assert_refused(argv, "--steps 2 is below step 4", capsys, tmp_path)


def test_huge_continuous_values_are_measured_and_trained(good, tmp_path, capsys) -> None:
    """1e40 conditions train (standardised, not fed raw); values near the float limit are measured."""
    data = Path(shutil.copytree(good, tmp_path / "data"))
    edit_metadata(data, lambda t: [{**r, "size": f"{float(r['size']) * 1e40:.6g}"} for r in t])
    out = train_generator(data, tmp_path / "gen", label="y", preset="tiny", steps=2, checkpoint_every=0,
                          mixed_precision="no")  # fmt: skip
    config = json.loads((out / "cfgen_generator.json").read_text())
    assert np.isfinite(config["training"]["final_loss"]["loss"])
    _, scale = config["standardization"]["size"]
    assert 1e38 < scale < 1e42

    edit_metadata(data, lambda t: [{**r, "size": f"{float(r['size']) / 1e40 * 5e307:.6g}"} for r in t])
    assert main(["measure", str(data), "--label", "y", "--out", str(tmp_path / "m"), "--bootstrap", "10"]) == 0
    report = json.loads((tmp_path / "m" / "confounding.json").read_text())
    assert all(np.isfinite(value) for row in report["association"].values() for value in row.values())


def test_the_commands_as_processes(good, tmp_path) -> None:
    """The same promise from a real process: exit code 2, one line on stderr, no traceback, nothing written."""
    (tmp_path / "a-file").write_text("")
    data = Path(shutil.copytree(good, tmp_path / "data"))
    latin_1(data)
    before = snapshot(tmp_path)
    running = [  # at once: each spends its time importing
        subprocess.Popen([sys.executable, "-m", "cfgen", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        for argv in (
            ["measure", str(data), "--label", "y", "--out", str(tmp_path / "m")],
            ["train-generator", "--data", str(good), "--label", "y", "--out", str(tmp_path / "a-file" / "g")],
        )
    ]  # fmt: skip
    for process in running:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2 and stderr.startswith("error: "), stderr
        assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert snapshot(tmp_path) == before
