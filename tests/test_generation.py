"""Counterfactual inference and generation: DDIM inversion reconstructs, two processes write every row
once, an interrupted run resumes to the same images, bad input is refused, and the metrics can tell an
exact counterfactual from an unedited copy."""

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from itertools import product
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_folder
from PIL import Image

from cfgen.cli import main
from cfgen.counterfactuals.generation import SETTINGS_FILE, GeneratorSource, staging_dir
from cfgen.counterfactuals.metrics import evaluate_counterfactuals
from cfgen.counterfactuals.tuning import REACH_FRACTIONS, SETTING_KEYS, choose_setting, reach
from cfgen.data.counterfactuals import image_name, write_counterfactual_folder
from cfgen.data.images import load_images
from cfgen.data.table import read_imagefolder
from cfgen.data.tensors import to_model_range
from cfgen.datasets.colored_mnist.readers import stroke_fidelity
from cfgen.datasets.colored_mnist.rendering import (
    ColoredMNISTConfig,
    load_digits,
    make_colored_mnist,
    render,
    render_counterfactual,
)
from cfgen.errors import CfgenError
from cfgen.generator.inference import (
    BEFORE_GUIDANCE,
    DIRECTIONS,
    NEGATIVES,
    InferenceSettings,
    otsu_threshold,
    parse_guidance,
    settings_for,
)
from cfgen.generator.model import Generator
from cfgen.generator.pipeline import RIM_NOISE, CounterfactualPipeline, InversionPath, store_inference
from cfgen.generator.training import train_generator
from cfgen.interventions import parse_intervention, plan_requests
from cfgen.judges import load_or_train_judges

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.trains
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
# the plan most tests generate: one random colour edit for each of the 12 test digits, in batches of 2
PLAN = ["--intervene", "fg_color=random", "--split", "test", "--ddim-steps", "6", "--batch-size", "2"]
JUDGE = {"judge_steps": 200, "judge_batch_size": 32, "judge_images": 1000}  # a weak judge, for speed


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = ColoredMNISTConfig(strength=0.9, sizes={"train": 160, "validation": 36, "test": 12}, seed=2)
    return make_colored_mnist(config, tmp_path_factory.mktemp("data") / "cmnist")


def _tiny_generator(dataset: Path, out: Path, prediction_type: str) -> Path:
    """A tiny generator after a few dozen steps: enough for structure, far from a good model."""
    return train_generator(
        dataset, out, preset="tiny", steps=40, batch_size=16, learning_rate=3e-3, ema_decay=0.0,
        checkpoint_every=0, mixed_precision="no", prediction_type=prediction_type,
    )  # fmt: skip


@pytest.fixture(scope="module")
def generator(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_generator(dataset, tmp_path_factory.mktemp("gen") / "gen", "v_prediction")


@pytest.fixture(scope="module")
def noise_generator(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As ``generator``, predicting the noise (the quick preset, and every generator from before the velocity)."""
    return _tiny_generator(dataset, tmp_path_factory.mktemp("gen") / "gen", "epsilon")


@pytest.fixture(scope="module")
def reference(dataset: Path, generator: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted single-process run of PLAN."""
    out = tmp_path_factory.mktemp("ref") / "cf"
    assert cli("generate", "--generator", str(generator), "--data", str(dataset), *PLAN, "--out", str(out)) == 0
    return out


@pytest.fixture(scope="module")
def judge_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("judges")


def cli(*args: str) -> int:
    return main(list(args))


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)).astype(int) for p in sorted((folder / "images").rglob("*.png"))}


def rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.clamp(-1, 1) - b) ** 2).mean() / 4)  # on the [0, 1] scale


@pytest.mark.parametrize(
    ("trained", "prediction_type"), [("generator", "v_prediction"), ("noise_generator", "epsilon")]
)
def test_inversion_then_decoding_reconstructs(
    trained: str, prediction_type: str, dataset: Path, request: pytest.FixtureRequest
) -> None:
    pipeline = CounterfactualPipeline.load(request.getfixturevalue(trained))
    for scheduler in (pipeline.scheduler, pipeline.inverse_scheduler):
        assert scheduler.config.prediction_type == prediction_type
    model = pipeline.model
    table = read_imagefolder(dataset).split("test")
    images = to_model_range(load_images(table.image_paths[:8], model.image_format))
    conditions = model.conditions(table)[:8]
    for settings in (InferenceSettings(steps=10, inversion_depth=1.0), InferenceSettings(steps=4, inversion_depth=0.3)):
        path = pipeline.inversion_path(images, conditions, settings)
        noise = path.latents[-1]
        decoded = pipeline.decode(path, conditions, settings)
        assert torch.equal(decoded, pipeline.edit(path, conditions, conditions, settings))  # deterministic
        reconstruction = mse(decoded, images)
        scale = noise.std() if settings.inversion_depth == 1 else 1.0
        alpha = model.scheduler.alphas_cumprod[int(settings.inversion_depth * 1000) - 1]
        start = torch.randn(noise.shape, generator=torch.Generator().manual_seed(0)) * scale
        if settings.inversion_depth < 1:  # the same noise level, but from the wrong image
            start = alpha.sqrt() * images.roll(1, 0) + (1 - alpha).sqrt() * start
        unrelated = mse(pipeline.decode(InversionPath([start]), conditions, settings), images)
        assert reconstruction < 0.1 * unrelated and reconstruction < 0.01, (settings, reconstruction, unrelated)


def test_guidance_syntax(generator: Path) -> None:
    schema = Generator.load(generator).schema
    assert parse_guidance(None, schema, ["fg_color"]) == {"fg_color": 3.0}
    assert parse_guidance("1.5", schema, ["fg_color", "thickness"]) == {"fg_color": 1.5, "thickness": 1.5}
    assert parse_guidance("fg_color=2, digit=1", schema, ["fg_color"]) == {"fg_color": 2.0, "digit": 1.0}
    for text, message in [("colour=2", "unknown attribute 'colour'"), ("fg_color=x", "must be a number"),
                          ("fg_color=1,fg_color=2", "appears twice"), ("nan", "finite")]:  # fmt: skip
        with pytest.raises(CfgenError, match=message):
            parse_guidance(text, schema, ["fg_color"])


def test_two_processes_write_every_row_once(dataset: Path, generator: Path, reference: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "cf"
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]  # fmt: skip
    command = [sys.executable, *launch, "-m", "cfgen", "generate", "--generator", str(generator),
               "--data", str(dataset), *PLAN, "--out", str(out)]  # fmt: skip
    env = {**ENV, "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1
    table = read_imagefolder(dataset)
    schema = Generator.load(generator).schema
    plan = plan_requests(table, schema, parse_intervention("fg_color=random", schema), rows=range(196, 208))
    written = rows(out)
    splits = table.column("split")
    assert [row["file_name"] for row in written] == [
        f"images/{splits[request.row]}/{Path(image_name(i)).name}" for i, request in enumerate(plan)
    ]  # each in its source's split's folder
    assert [(int(row["cf_source_row"]), row["fg_color"]) for row in written] == [
        (request.row, request.target["fg_color"]) for request in plan
    ]
    made = sorted(p.name for p in (out / "images").rglob("*.png"))
    assert made == [Path(image_name(i)).name for i in range(len(plan))]
    assert not staging_dir(out).exists()
    # each process made its own share, and the right images: the same as one process, up to rounding
    ours, theirs = pixels(out), pixels(reference)
    assert ours.keys() == theirs.keys()
    assert max(np.abs(ours[name] - theirs[name]).max() for name in ours) <= 2


def test_killed_run_resumes_to_the_same_images(dataset: Path, generator: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "cf"
    command = [sys.executable, "-m", "cfgen", "generate", "--generator", str(generator),
               "--data", str(dataset), *PLAN, "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(command, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    images = staging_dir(out) / "images"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if images.is_dir() and len(list(images.glob("*.png"))) >= 2:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()[-2000:] if process.stderr else ""
    process.stderr.close()
    done = len(list(images.glob("*.png")))
    assert 2 <= done < 12 and not out.exists()

    # another setting is refused, with the partial run kept
    assert cli("generate", "--generator", str(generator), "--data", str(dataset), *PLAN, "--ddim-steps", "5",
               "--out", str(out)) == 2  # fmt: skip
    assert len(list(images.glob("*.png"))) == done
    before = {p.name: p.stat().st_mtime_ns for p in images.glob("*.png")}
    # a partial run stored before the negative was a setting resumes as it began (the attribute dropped)
    stored = staging_dir(out) / SETTINGS_FILE
    settings = json.loads(stored.read_text())
    assert settings.pop("negative") == "dropped"
    assert settings.pop("before_guidance") == "target"  # and before the steps before guidance could drop
    stored.write_text(json.dumps(settings))

    assert cli("generate", "--generator", str(generator), "--data", str(dataset), *PLAN, "--out", str(out)) == 0
    assert not staging_dir(out).exists()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png") if p.name in before} == before
    ours, theirs = pixels(out), pixels(reference)
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[name], theirs[name]) for name in ours)
    assert rows(out) == rows(reference)
    assert (out / "examples.png").is_file() and (out / "run.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--intervene", "colour=red"], "unknown attribute 'colour'; valid names: digit, fg_color"),
        (["--intervene", "fg_color=teal"], "'teal' is not a value of 'fg_color'; valid values: red, orange"),
        (["--intervene", "fg_color"], "write attribute=value"),
        (["--intervene", "fg_color=*", "--guidance", "colour=2"], "unknown attribute 'colour'"),
        (["--intervene", "fg_color=*", "--inversion-depth", "1.5"], r"--inversion-depth must be in \(0, 1\]"),
        (["--intervene", "fg_color=*", "--guidance-start", "1"], r"--guidance-start must be in \[0, 1\)"),
        (["--intervene", "fg_color=*", "--split", "nope"], "split 'nope' not found"),
    ],
)
def test_bad_input_is_refused_and_nothing_written(
    dataset: Path, generator: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    out = tmp_path / "cf"
    assert cli("generate", "--generator", str(generator), "--data", str(dataset), *args, "--out", str(out)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    assert re.search(message, error), error
    assert not out.exists() and not staging_dir(out).exists()


def test_generator_and_dataset_must_match(dataset: Path, generator: Path, tmp_path: Path, capsys) -> None:
    other = write_folder(tmp_path / "other", [{"digit": str(i % 2), "colour": "red"} for i in range(4)], (28, 28))
    assert cli("generate", "--generator", str(generator), "--data", str(other), "--intervene", "fg_color=*",
               "--out", str(tmp_path / "a")) == 2  # fmt: skip
    assert "lacks column(s) fg_color, bg_color, thickness that the generator" in capsys.readouterr().err
    # the same columns, but a colour the generator never saw
    renamed = tmp_path / "renamed"
    shutil.copytree(dataset, renamed)
    table = rows(renamed)
    table[-1]["fg_color"] = "teal"
    with (renamed / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    assert cli("generate", "--generator", str(generator), "--data", str(renamed), "--intervene", "fg_color=*",
               "--split", "test", "--out", str(tmp_path / "b")) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert "column 'fg_color'" in error and "'teal'" in error and "was not trained with" in error
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_exact_generator_through_the_same_command(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "exact"
    assert cli("generate", "--generator", "exact", "--data", str(dataset), "--intervene", "fg_color=*",
               "--split", "test", "--out", str(out)) == 0  # fmt: skip
    written = rows(out)
    assert len(written) == 12 * 9 and {row["cf_generator"] for row in written} == {"exact"}
    truth = render_counterfactual(dataset, int(written[10]["cf_source_row"]), {"fg_color": written[10]["fg_color"]})
    assert np.array_equal(np.asarray(Image.open(out / written[10]["file_name"])), truth)
    assert cli("generate", "--generator", "exact", "--data", str(dataset), "--intervene", "digit=3",
               "--out", str(tmp_path / "a")) == 2  # fmt: skip
    assert "no exact counterfactual" in capsys.readouterr().err
    assert cli("generate", "--generator", "exact", "--data", str(dataset), "--intervene", "fg_color=*",
               "--steps", "3", "--out", str(tmp_path / "b")) == 2  # fmt: skip
    err = capsys.readouterr().err  # the old spelling is still read, with a note
    assert "note: --steps is deprecated; use --ddim-steps" in err and "--ddim-steps applies to a trained" in err
    assert cli("generate", "--generator", "exact", "--data", str(dataset), "--intervene", "fg_color=*",
               "--split", "test", "--out", str(out)) == 2  # fmt: skip
    assert "already exists" in capsys.readouterr().err


def test_metrics_tell_exact_counterfactuals_from_unedited_copies(
    dataset: Path, tmp_path: Path, judge_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    exact = tmp_path / "exact"
    assert cli("generate", "--generator", "exact", "--data", str(dataset), "--intervene", "fg_color=*",
               "--split", "validation", "--out", str(exact)) == 0  # fmt: skip
    good = evaluate_counterfactuals(exact, dataset, exact=exact, judge_cache=judge_cache, **JUDGE)
    accuracy = good["judge_accuracy_on_sources"]
    assert accuracy["fg_color"] == accuracy["bg_color"] == 1.0 and accuracy["digit"] > 0.4
    scores = good["all"]
    assert scores["rows"] == good["exact_matched"] == 36 * 9 and scores["mse_to_exact"] == 0.0
    assert scores["stroke_iou"] == 1.0 and scores["stroke_width_error"] == scores["stroke_width_change"] == 0.0
    assert scores["stroke_strength"] == 1.0
    assert scores["effectiveness"] == {"fg_color": 1.0, "all": 1.0} and scores["preservation"]["bg_color"] == 1.0
    for name in ("digit", "thickness"):  # an unconfounded judge reads the same after a colour edit
        assert scores["preservation"][name] == pytest.approx(accuracy[name], abs=0.15)
        assert scores["agreement_with_source"][name] > 0.6
    assert 0 < good["rare"]["rows"] < 36 * 9 and good["absent"]["rows"] <= good["rare"]["rows"]
    assert good["rare"]["effectiveness"]["fg_color"] == 1.0

    # the same rows, but every image is its unedited source
    unedited = tmp_path / "unedited"
    shutil.copytree(exact, unedited)
    for row in rows(unedited):
        shutil.copy(dataset / row["cf_source"], unedited / row["file_name"])
    out = tmp_path / "metrics"
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in JUDGE.items()]
    assert cli("evaluate-counterfactuals", "--counterfactuals", str(unedited), "--data", str(dataset),
               "--exact", str(exact), "--out", str(out), "--judge-cache", str(judge_cache), *flags) == 0  # fmt: skip
    bad = json.loads((out / "metrics.json").read_text())
    assert bad["judges"]["folder"] == good["judges"]["folder"]  # cached, not retrained
    assert bad["all"]["effectiveness"]["fg_color"] == 0.0 and bad["all"]["mse_to_exact"] > 0.01
    assert bad["all"]["preservation"]["bg_color"] == 1.0
    assert bad["all"]["preservation"]["digit"] == pytest.approx(accuracy["digit"], abs=1e-9)
    assert bad["all"]["agreement_with_source"]["all"] == 1.0  # the very source images
    assert bad["all"]["stroke_iou"] > 0.9 and bad["all"]["stroke_width_error"] < 0.2  # the shape is the source's

    # the edits of one source colour left undone: the breakdown by source value shows where edits failed
    undone = tmp_path / "undone"
    shutil.copytree(exact, undone)
    source_colours = [row["cf_factual"].removeprefix("fg_color=") for row in rows(undone)]
    colour = max(set(source_colours), key=source_colours.count)
    for row, source_colour in zip(rows(undone), source_colours, strict=True):
        if source_colour == colour:
            shutil.copy(dataset / row["cf_source"], undone / row["file_name"])
    capsys.readouterr()
    assert cli("evaluate-counterfactuals", "--counterfactuals", str(undone), "--data", str(dataset),
               "--exact", str(exact), "--out", str(tmp_path / "m-undone"), "--judge-cache", str(judge_cache),
               *flags) == 0  # fmt: skip
    by_colour = json.loads((tmp_path / "m-undone" / "metrics.json").read_text())["all"]["by_source"]["fg_color"]
    assert by_colour[colour]["rows"] == source_colours.count(colour) >= 10
    assert by_colour[colour]["effectiveness"] == by_colour[colour]["success"] == 0.0
    assert by_colour[colour]["mse_to_exact"] > 0.01
    assert all(cell["effectiveness"] == 1.0 and cell["mse_to_exact"] == 0.0
               for value, cell in by_colour.items() if value != colour)  # fmt: skip
    assert sum(cell["rows"] for cell in by_colour.values()) == 36 * 9
    assert f"fg_color={colour} 0.000 of {by_colour[colour]['rows']}" in capsys.readouterr().out
    # realism: the judges' features of the sources and of the edits; scrambled pixels are far from both
    scrambled = tmp_path / "scrambled"
    shutil.copytree(exact, scrambled)
    rng = np.random.default_rng(0)
    for row in rows(scrambled):
        pixels_of = np.asarray(Image.open(scrambled / row["file_name"]))
        flat = pixels_of.reshape(-1, pixels_of.shape[-1])
        Image.fromarray(flat[rng.permutation(len(flat))].reshape(pixels_of.shape)).save(scrambled / row["file_name"])
    noise = evaluate_counterfactuals(scrambled, dataset, judge_cache=judge_cache, **JUDGE)["all"]["realism_frechet"]
    assert bad["all"]["realism_frechet"] < good["all"]["realism_frechet"] < 0.5 * noise
    assert good["soundness_images"] == bad["soundness_images"] == 0  # no trained generator made them
    assert "reversibility_l1" not in good["all"]

    # exact counterfactuals of only the first two sources: the figures against exact cover 18 rows, and it says so
    partial = tmp_path / "partial"
    assert cli("generate", "--generator", "exact", "--data", str(dataset), "--intervene", "fg_color=*",
               "--split", "validation", "--limit", "2", "--out", str(partial)) == 0  # fmt: skip
    capsys.readouterr()
    assert cli("evaluate-counterfactuals", "--counterfactuals", str(exact), "--data", str(dataset), "--exact",
               str(partial), "--out", str(tmp_path / "m2"), "--judge-cache", str(judge_cache), *flags) == 0  # fmt: skip
    assert f"note: only 18 of {36 * 9} counterfactuals have an exact counterpart" in capsys.readouterr().out
    assert json.loads((tmp_path / "m2" / "metrics.json").read_text())["exact_matched"] == 18


def test_generated_counterfactuals_are_a_hugging_face_dataset(reference: Path, tmp_path: Path) -> None:
    loaded = datasets.load_dataset(str(reference), cache_dir=str(tmp_path))
    assert {name: part.num_rows for name, part in loaded.items()} == {"test": 12}
    features = loaded["test"].features
    assert isinstance(features["fg_color"], datasets.ClassLabel) and features["cf_generator"].dtype == "string"
    assert loaded["test"][0]["image"].size == (28, 28)


def test_soundness_of_a_generators_counterfactuals(dataset: Path, reference: Path, judge_cache: Path) -> None:
    found = evaluate_counterfactuals(reference, dataset, judge_cache=judge_cache, soundness_images=4, **JUDGE)
    assert found["soundness_images"] == 4
    for group in ("all", "rare"):
        scores = found[group]
        for name in ("composition_l1_1", "composition_l1_10", "reversibility_l1"):
            assert scores[name] is None or 0 < scores[name] < 1, (group, name)
    assert found["all"]["reversibility_l1"] is not None and found["rare"]["realism_frechet"] >= 0
    off = evaluate_counterfactuals(reference, dataset, judge_cache=judge_cache, soundness_images=0, **JUDGE)
    assert off["soundness_images"] == 0 and "reversibility_l1" not in off["all"]


def test_stroke_fidelity_sees_shape_thickness_and_fading() -> None:
    digits, labels = load_digits()
    one, other = int(np.flatnonzero(labels == 3)[0]), int(np.flatnonzero(labels == 1)[0])

    def image(index: int, **factors: str) -> np.ndarray:
        return render(digits, index, {"fg_color": "red", "bg_color": "navy", "thickness": "normal", **factors}, 28)

    truth = image(one)

    def fidelity(edit: np.ndarray) -> tuple[float, float, float]:
        scores = stroke_fidelity(edit[None], truth[None])
        return tuple(float(scores[key][0]) for key in ("stroke_iou", "stroke_width_error", "stroke_width_change"))

    assert fidelity(truth) == (1.0, 0.0, 0.0)

    def strength(edit: np.ndarray, of: np.ndarray = truth) -> float:
        return float(stroke_fidelity(edit[None], of[None])["stroke_strength"][0])

    assert strength(truth) == 1.0
    background = truth[0, 0].astype(np.float64)
    for share in (0.5, 0.8):  # the stroke faded toward the background: masks and widths unchanged
        faded = np.rint(background + share * (truth - background)).astype(np.uint8)
        iou, width_error, _ = fidelity(faded)
        assert iou > 0.95 and width_error < 0.1
        assert strength(faded) == pytest.approx(share, abs=0.01)
    assert strength(image(one, thickness="thin")) < 0.8
    assert 1.0 < strength(image(one, thickness="thick")) < 1.3  # read over the exact stroke: the rest not counted
    blank = np.broadcast_to(truth[:1, :1], truth.shape).copy()  # no stroke at all
    assert strength(blank, of=blank) == 1.0 and strength(truth, of=blank) == 1.0
    assert strength(blank) == 0.0
    for colours in ({"fg_color": "cyan", "bg_color": "brown"}, {"fg_color": "pink", "bg_color": "gray"}):
        iou, width_error, _ = fidelity(image(one, **colours))
        assert iou > 0.9 and width_error < 0.2, colours
    for thickness, sign in (("thin", -1), ("thick", 1)):
        iou, width_error, width_change = fidelity(image(one, thickness=thickness))
        assert iou < 0.8 and width_error > 0.5 and width_change == sign * width_error, thickness
    iou, _, _ = fidelity(image(other))
    assert iou < 0.4


def _square_image(y: str, color: str, rng: np.random.Generator) -> np.ndarray:
    """A 16 px image: the colour fills it, label 1 adds a white square in a corner."""
    image = np.array({"red": (220, 30, 30), "green": (30, 220, 30)}[color]) + rng.integers(-20, 20, (16, 16, 3))
    if y == "1":
        image[2:7, 2:7] = 255
    return np.clip(image, 0, 255).astype(np.uint8)


def test_metrics_on_other_datasets_use_group_balanced_judges(tmp_path: Path, judge_cache: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "squares"
    (data / "images").mkdir(parents=True)
    table_rows = []
    for i in range(140):  # y and color agree in 28 of 30 training rows; the test rows are balanced
        y, train = str(i % 2), i < 120
        color = ("red", "green")[int(y) ^ (i % 30 >= 28)] if train else ("red", "green")[(i // 2) % 2]
        Image.fromarray(_square_image(y, color, rng)).save(data / "images" / f"{i}.png")
        table_rows.append(
            {"file_name": f"images/{i}.png", "y": y, "color": color, "split": "train" if train else "test"}
        )
    with (data / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table_rows[0]))
        writer.writeheader()
        writer.writerows(table_rows)

    table = read_imagefolder(data)
    schema = table.schema("y")
    intervention = parse_intervention("color=*", schema)
    requests = plan_requests(table, schema, intervention, rows=range(120, 140))
    scores = {}
    for kind in ("edited", "unedited"):
        folder = tmp_path / kind
        (folder / "images").mkdir(parents=True)
        for i, request in enumerate(requests):
            color = request.target["color"] if kind == "edited" else table.columns["color"][request.row]
            image = _square_image(table.columns["y"][request.row], color, rng)
            Image.fromarray(image).save(folder / image_name(i))
        write_counterfactual_folder(folder, data, table, requests, intervention, "synthetic", schema)
        scores[kind] = evaluate_counterfactuals(folder, data, label="y", judge_cache=judge_cache, judge_steps=120,
                                                judge_batch_size=32)  # fmt: skip
    edited, unedited = scores["edited"], scores["unedited"]
    assert edited["judges"]["learned"] == ["y", "color"] and edited["judges"]["pixel"] == []
    assert "group-balanced" in edited["judges"]["training"]["sampling"]
    assert edited["judge_accuracy_on_sources"] == {"y": 1.0, "color": 1.0}
    assert edited["all"]["effectiveness"]["color"] == 1.0 and edited["all"]["preservation"]["y"] == 1.0
    assert unedited["all"]["effectiveness"]["color"] == 0.0 and unedited["all"]["preservation"]["y"] == 1.0
    # green 0s and red 1s are 4 of 120 training rows each, under 0.2 x the 30 of independence: the 10
    # edits that make one are rare, none absent
    assert edited["rare"]["rows"] == 10 and edited["absent"]["rows"] == 0
    assert edited["exact"] is None and "mse_to_exact" not in edited["all"]


def test_settings_chosen_on_validation_are_saved_and_used(
    dataset: Path, generator: Path, tmp_path: Path, judge_cache: Path, capsys
) -> None:
    tuned = tmp_path / "gen"
    shutil.copytree(generator, tuned)
    judge = [f"--{key.replace('_', '-')}={value}" for key, value in JUDGE.items()]
    grid = ["--depths", "0.4,1.0", "--guidance", "6", "--guidance-starts", "0,0.5", "--localize", "no,others",
            "--inversions", "ddim,ddpm", "--negatives", "dropped,source", "--directions", "joint,untied",
            "--before-guidance", "target,dropped", "--holds", "2", "--ddim-steps", "4",
            "--sources", "3", *judge]  # fmt: skip
    common = ["--generator", str(tuned), "--data", str(dataset), "--judge-cache", str(judge_cache), *grid]
    assert cli("tune-inference", *common, "--attributes", "fg_color,thickness") == 0
    inference = json.loads((tuned / "cfgen_generator.json").read_text())["inference"]
    assert CounterfactualPipeline.from_pretrained(tuned).config.inference == inference  # both records agree
    assert f"(chosen: {json.dumps(inference['attributes'])})" in (tuned / "README.md").read_text()  # the card too
    assert set(inference["attributes"]) == {"fg_color", "thickness"}
    assert inference["selection"]["split"] == "validation" and inference["selection"]["sources"] == 3
    for name, scores in inference["selection"]["grid"].items():
        assert len(scores) == 97  # (1 start at 0 + 2 conditions before a start at 0.5) x 32, and a hold
        # the grid without holding, then the hold tried at its best point
        grid_points, held = scores[:96], scores[96]
        assert all(s["hold"] == 0 for s in grid_points)
        first = choose_setting(grid_points, 3)
        assert held == {**held, **{key: first[key] for key in SETTING_KEYS}, "hold": 2.0}
        best = choose_setting([first, held], 3)  # the rule itself: test_a_setting_within_half_an_edit_of_the_best_...
        assert all(s["success"] <= min(s["effectiveness"], s["kept"]) for s in scores)
        assert all(0 <= s["graded_success"] <= s["success"] and 0 <= s["reach"] <= 1 for s in scores)
        # an edit the judges read as its target reads so at least at its own end of the way
        assert all((s["reach"] > 0) == (s["effectiveness"] > 0) for s in scores)
        assert all(s["graded_success"] >= s["success"] / len(REACH_FRACTIONS) - 1e-9 for s in scores)
        points = {tuple(s[key] for key in SETTING_KEYS if key not in ("guidance", "hold")) for s in scores}
        assert points == {
            (depth, local, inversion, start, negative, direction, before)
            for depth, local, inversion, start, negative, direction in product(
                (0.4, 1.0), ("no", "others"), ("ddim", "ddpm"), (0.0, 0.5), NEGATIVES, DIRECTIONS
            )
            for before in (BEFORE_GUIDANCE if start else ("target",))  # recorded as target at a start of 0
        }
        assert all(0 < s["change"] < 1 for s in scores)  # mean absolute pixel change, images in [0, 1]
        expected = {"steps": 4, **{key: best[key] for key in SETTING_KEYS}}
        assert inference["attributes"][name] == expected

    # cfgen generate uses the chosen settings unless told otherwise
    chosen = inference["attributes"]["fg_color"]
    out = tmp_path / "cf"
    edit = ["generate", "--generator", str(tuned), "--data", str(dataset), "--intervene", "fg_color=random",
            "--split", "test", "--limit", "2"]  # fmt: skip
    assert cli(*edit, "--out", str(out)) == 0
    used = json.loads((out / "run.json").read_text())["config"]
    assert (used["steps"], used["inversion_depth"]) == (4, chosen["inversion_depth"])
    held = {name: chosen["hold"] for name in ("digit", "bg_color", "thickness")} if chosen["hold"] else {}
    assert used["guidance"] == {"fg_color": chosen["guidance"], **held}
    assert (used["localize"], used["inversion"]) == (chosen["localize"], chosen["inversion"])
    assert (used["guidance_start"], used["negative"]) == (chosen["guidance_start"], chosen["negative"])
    assert cli(*edit, "--inversion-depth", "0.5", "--out", str(tmp_path / "cf2")) == 0
    assert json.loads((tmp_path / "cf2" / "run.json").read_text())["config"]["inversion_depth"] == 0.5
    assert cli(*edit, "--guidance-start", "0.75", "--out", str(tmp_path / "cf3")) == 0
    assert json.loads((tmp_path / "cf3" / "run.json").read_text())["config"]["guidance_start"] == 0.75
    other = next(negative for negative in NEGATIVES if negative != chosen["negative"])
    assert cli(*edit, "--negative", other, "--out", str(tmp_path / "cf4")) == 0
    assert json.loads((tmp_path / "cf4" / "run.json").read_text())["config"]["negative"] == other
    assert used["direction"] == chosen["direction"]
    other = next(direction for direction in DIRECTIONS if direction != chosen["direction"])
    assert cli(*edit, "--direction", other, "--out", str(tmp_path / "cf5")) == 0
    assert json.loads((tmp_path / "cf5" / "run.json").read_text())["config"]["direction"] == other
    assert used["before_guidance"] == chosen["before_guidance"]
    other = next(before for before in BEFORE_GUIDANCE if before != chosen["before_guidance"])
    assert cli(*edit, "--before-guidance", other, "--out", str(tmp_path / "cf6")) == 0
    assert json.loads((tmp_path / "cf6" / "run.json").read_text())["config"]["before_guidance"] == other

    # a joint edit inverts as deep as its deepest attribute needs, each attribute with its own guidance
    joint = settings_for(Generator.load(tuned), ("fg_color", "thickness"))
    thickness = inference["attributes"]["thickness"]
    assert joint.inversion_depth == max(chosen["inversion_depth"], thickness["inversion_depth"])
    hold = max(chosen["hold"], thickness["hold"])
    held = {name: hold for name in ("digit", "bg_color")} if hold else {}
    assert joint.guidance == {"fg_color": chosen["guidance"], "thickness": thickness["guidance"], **held}
    assert joint.localize == ("others" if "others" in (chosen["localize"], thickness["localize"]) else "no")
    assert joint.inversion == ("ddpm" if "ddpm" in (chosen["inversion"], thickness["inversion"]) else "ddim")
    assert joint.guidance_start == min(chosen["guidance_start"], thickness["guidance_start"])
    assert joint.negative == ("source" if "source" in (chosen["negative"], thickness["negative"]) else "dropped")
    assert joint.direction == ("untied" if "untied" in (chosen["direction"], thickness["direction"]) else "joint")
    late = [t["before_guidance"] for t in (chosen, thickness) if t["guidance_start"]]
    assert joint.before_guidance == ("dropped" if "dropped" in late else "target")
    capsys.readouterr()

    # never on the test split; only attributes the generator edits; a folder without validation rows
    assert cli("tune-inference", *common, "--split", "test") == 2
    assert "never chosen on a test split" in capsys.readouterr().err
    assert cli("tune-inference", *common, "--attributes", "hue") == 2
    assert "attributes the generator edits: fg_color, bg_color, thickness" in capsys.readouterr().err
    assert cli("tune-inference", *common, "--split", "holdout") == 2
    assert "has no 'holdout' split" in capsys.readouterr().err
    assert cli("tune-inference", *common, "--localize", "yes") == 2
    assert "unknown localize choice 'yes'; choose from no, edit, others" in capsys.readouterr().err
    assert cli("tune-inference", *common, "--holds", "0") == 2
    assert "hold weights must be positive numbers, not 0.0" in capsys.readouterr().err
    assert cli("tune-inference", *common, "--negatives", "target") == 2
    assert "unknown negative 'target'; choose from dropped, source" in capsys.readouterr().err
    assert cli("tune-inference", *common, "--directions", "apart") == 2
    assert "unknown direction 'apart'; choose from joint, untied" in capsys.readouterr().err
    assert cli("tune-inference", *common, "--before-guidance", "later") == 2
    assert "unknown condition before guidance 'later'; choose from target, dropped" in capsys.readouterr().err


def test_a_saved_hold_guides_every_variable_the_edit_keeps(
    dataset: Path, generator: Path, tmp_path: Path, judge_cache: Path
) -> None:
    """A hold chosen for an attribute becomes guidance toward the source values of every other variable,
    in joint edits too (the strongest hold of theirs), and a --guidance given replaces it; settings saved
    before holds (and late starts, and the inversion) were choices hold nothing and stay readable."""
    held = tmp_path / "gen"
    shutil.copytree(generator, held)
    chosen = {"steps": 4, "inversion_depth": 0.6, "guidance": 5.0, "localize": "edit", "inversion": "ddpm",
              "guidance_start": 0.0}  # fmt: skip
    attributes = {"thickness": {**chosen, "hold": 1.5}, "fg_color": {**chosen, "guidance": 3.0, "hold": 0.0}}
    store_inference(held, {"attributes": attributes, "selection": {}})
    model = Generator.load(held)
    assert settings_for(model, ("thickness",)).guidance == {"thickness": 5.0, "digit": 1.5, "fg_color": 1.5,
                                                             "bg_color": 1.5}  # fmt: skip
    assert settings_for(model, ("fg_color",)).guidance == {"fg_color": 3.0}
    assert settings_for(model, ("fg_color", "thickness")).guidance == {"fg_color": 3.0, "thickness": 5.0,
                                                                        "digit": 1.5, "bg_color": 1.5}  # fmt: skip
    assert settings_for(model, ("thickness",), guidance="4").guidance == {"thickness": 4.0}

    before = {"steps": 4, "inversion_depth": 0.6, "guidance": 2.0, "localize": False}  # an early record
    store_inference(held, {"attributes": {"bg_color": before}, "selection": {}})
    assert settings_for(Generator.load(held), ("bg_color",)).guidance == {"bg_color": 2.0}
    judge = [f"--{key.replace('_', '-')}={value}" for key, value in JUDGE.items()]
    grid = ["--depths", "1.0", "--guidance", "3", "--localize", "no", "--inversions", "ddpm", "--ddim-steps", "4",
            "--sources", "2", *judge]  # fmt: skip
    tune = ["tune-inference", "--generator", str(held), "--data", str(dataset), "--judge-cache", str(judge_cache)]
    assert cli(*tune, *grid, "--attributes", "thickness") == 0
    assert Generator.load(held).inference["attributes"]["bg_color"] == before


def test_reach_grows_with_how_far_an_edit_goes(dataset: Path, judge_cache: Path) -> None:
    """The tuner's reach: exact colour edits read as their target on more of the way from the source
    than the same edits taken part of the way, and an unedited copy never does."""
    table = read_imagefolder(dataset)
    schema = table.schema("digit")
    options = {key.removeprefix("judge_"): value for key, value in JUDGE.items()}  # steps, batch_size, images
    judges = load_or_train_judges(table, schema, judge_cache, **options)
    assert judges.network.convolutions == judges.record["cache_key"]["convolutions"] == 2  # the digits' own trunk
    rows = np.flatnonzero(table.column("split") == "validation")
    colours = schema["fg_color"].values
    targets = [colours[(colours.index(table.column("fg_color")[row]) + 1) % len(colours)] for row in rows]
    codes = schema["fg_color"].encode(np.array(targets))
    sources = load_images(table.image_paths[rows], judges.image_format)
    exact = np.stack([render_counterfactual(dataset, row, {"fg_color": targets[i]}) for i, row in enumerate(rows)])
    part_way = np.rint(sources + 0.7 * (exact.astype(np.float32) - sources)).astype(np.uint8)

    complete, partial = (reach(judges, "fg_color", sources, edits, codes) for edits in (exact, part_way))
    assert complete.min() > 0 and (complete >= partial).all() and complete.mean() > partial.mean() + 0.1
    assert (reach(judges, "fg_color", sources, sources, codes) == 0).all()


def test_a_setting_within_half_an_edit_of_the_best_that_changes_less_wins() -> None:
    def point(name: str, graded: float, change: float) -> dict:
        return {"name": name, "graded_success": graded, "change": change}

    # 64 edits: a plain edit that reaches 0.004 further, repainting more, ties with the localized one
    scores = [point("plain", 0.572, 0.172), point("localized", 0.568, 0.148), point("weak", 0.31, 0.09)]
    assert choose_setting(scores, 64)["name"] == "localized"
    # a lead of more than half an edit wins whatever it changes
    assert choose_setting(scores, 200)["name"] == "plain"
    assert choose_setting([point("only", 0.0, 0.5)], 8)["name"] == "only"


def background_edits(dataset: Path, generator: Path) -> tuple[CounterfactualPipeline, torch.Tensor, ...]:
    """The pipeline, four test images in [-1, 1], their factual rows, and rows with the next background."""
    pipeline = CounterfactualPipeline.load(generator)
    model = pipeline.model
    table = read_imagefolder(dataset).split("test")
    images = to_model_range(load_images(table.image_paths[:4], model.image_format))
    factual = model.conditions(table)[:4]
    target = factual.clone()
    column = model.schema.names.index("bg_color")
    target[:, column] = (factual[:, column] + 1) % 4
    return pipeline, images, factual, target


def rim_steps(pipeline: CounterfactualPipeline, settings: InferenceSettings) -> list[int]:
    """The decoding steps from timesteps below ``RIM_NOISE`` of the schedule."""
    last = RIM_NOISE * pipeline.scheduler.config.num_train_timesteps
    return [step for step, t in enumerate(pipeline.decoding_timesteps(settings)) if t < last]


def test_localized_edits_keep_the_source_outside_the_mask(dataset: Path, generator: Path) -> None:
    pipeline, images, factual, target = background_edits(dataset, generator)
    settings = InferenceSettings(steps=6, inversion_depth=1.0, guidance={"bg_color": 3.0}, localize=True)
    assert settings.localize == "edit"  # as saved before masks had kinds
    path = pipeline.inversion_path(images, factual, settings)
    assert len(path.latents) == 7 and torch.equal(path.latents[0], images)
    masks = {}
    for kind in ("edit", "others"):
        local = replace(settings, localize=kind)
        masks[kind] = mask = pipeline.edit_mask(path, factual, target, local)
        assert mask.shape == (6, 4, 1, 28, 28) and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert ((mask.mean((2, 3, 4)) > 0) & (mask.mean((2, 3, 4)) < 1)).all()  # Otsu splits every map in two
        held = 6 - len(rim_steps(pipeline, local))  # the steps that decide shapes: one region throughout
        assert held >= 1 and all(torch.equal(mask[step], mask[0]) for step in range(held))
        edited = pipeline.edit(path, factual, target, local)
        outside = mask[-1].expand_as(images) == 0
        assert torch.equal(edited[outside], images[outside])  # the last step lands on the source itself
        plain = pipeline.edit(path, factual, target, replace(settings, localize="no"))
        assert not torch.equal(plain[outside], images[outside])
    assert not torch.equal(masks["edit"], masks["others"])
    assert torch.equal(masks["edit"][-1], masks["edit"][0])
    # outside the kept variables' region, the last steps reach a pixel into it and repaint that rim
    others = masks["others"]
    assert torch.equal(others[-1], F.max_pool2d(others[0], 3, stride=1, padding=1))
    rim = (others[-1] - others[0]).expand_as(images) == 1
    edited = pipeline.edit(path, factual, target, replace(settings, localize="others"))
    assert rim.any() and not torch.equal(edited[rim], images[rim])
    # from the same noise level on whatever the depth: a shallower edit spends more of its steps there
    for depth in (1.0, 0.5):
        local = replace(settings, localize="others", inversion_depth=depth)
        mask = pipeline.edit_mask(pipeline.inversion_path(images, factual, local), factual, target, local)
        reaching = [step for step in range(6) if not torch.equal(mask[step], mask[0])]
        assert reaching == rim_steps(pipeline, local)
    assert len(rim_steps(pipeline, replace(settings, inversion_depth=0.5))) > len(rim_steps(pipeline, settings))
    with pytest.raises(CfgenError, match="--localize must be one of no, edit, others, not 'yes'"):
        InferenceSettings(localize="yes")


def test_guidance_starts_where_asked(dataset: Path, generator: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, images, factual, target = background_edits(dataset, generator)
    settings = InferenceSettings(steps=6, inversion_depth=1.0, guidance={"bg_color": 3.0}, guidance_start=0.5)
    path = pipeline.inversion_path(images, factual, settings)
    weights, guided_prediction = [], Generator.guided_prediction

    def recording(self: Generator, sample: torch.Tensor, t: torch.Tensor, conditions: torch.Tensor, guidance: dict,
                  negative: torch.Tensor | None = None, untie: dict | None = None):  # fmt: skip
        weights.append(dict(guidance))
        return guided_prediction(self, sample, t, conditions, guidance, negative, untie)

    monkeypatch.setattr(Generator, "guided_prediction", recording)
    late = pipeline.decode(path, target, settings)
    assert weights == [{}] * 3 + [{"bg_color": 3.0}] * 3  # the three noisiest steps unguided
    assert not torch.equal(late, pipeline.decode(path, target, replace(settings, guidance_start=0.0)))
    for bad in (1.0, -0.1):
        with pytest.raises(CfgenError, match=r"--guidance-start must be in \[0, 1\)"):
            InferenceSettings(guidance_start=bad)


def test_settings_saved_before_the_negative_keep_the_attribute_dropped(generator: Path, tmp_path: Path) -> None:
    folder = tmp_path / "gen"
    shutil.copytree(generator, folder)
    old = {"steps": 4, "inversion_depth": 0.6, "guidance": 3.0, "localize": "edit"}  # no "negative"
    store_inference(folder, {"attributes": {"fg_color": old, "thickness": {**old, "negative": "source"}}})
    model = Generator.load(folder)
    assert settings_for(model, ("fg_color",)).negative == "dropped"
    assert settings_for(model, ("fg_color", "thickness")).negative == "source"  # a joint edit: source where any is
    assert settings_for(model, ("thickness",), negative="dropped").negative == "dropped"  # what is given wins


def test_guidance_pushes_away_from_the_source_value_where_the_edit_changes_it(dataset: Path, generator: Path) -> None:
    pipeline, images, factual, target = background_edits(dataset, generator)
    model = pipeline.model
    column = model.schema.names.index("bg_color")
    target[0] = factual[0]  # a null edit among real ones
    t = pipeline.scheduler.timesteps[0]
    noisy = pipeline.scheduler.add_noise(images, torch.randn_like(images), t)
    away = model.guided_prediction(noisy, t, target, {"bg_color": 2.0}, negative=factual)
    with torch.inference_mode():
        full = model.predict(noisy, t, target)
        at_source = target.clone()
        at_source[:, column] = factual[:, column]
        source = model.predict(noisy, t, at_source)
        dropped = model.guided_prediction(noisy, t, target, {"bg_color": 2.0})
    # p(target) + w (p(target) - p(the attribute at its source value)) where the edit changes it
    torch.testing.assert_close(away[1:], (full + 2.0 * (full - source))[1:], rtol=1e-4, atol=1e-4)
    # a row the edit keeps has no source direction: the attribute is dropped, as classifier-free guidance does
    torch.testing.assert_close(away[:1], dropped[:1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(away[1:], dropped[1:])

    settings = InferenceSettings(4, 1.0, {"bg_color": 3.0}, inversion="ddpm", negative="source")
    path = pipeline.inversion_path(images, factual, settings)
    assert torch.equal(path.factual, factual) and torch.equal(path.select([1, 1]).factual, factual[[1, 1]])
    edits = {negative: pipeline.decode(path, target, replace(settings, negative=negative)) for negative in NEGATIVES}
    assert not torch.equal(edits["source"][1:], edits["dropped"][1:])
    torch.testing.assert_close(edits["source"][:1], edits["dropped"][:1], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="needs the path's factual values"):
        pipeline.decode(replace(path, factual=None), target, settings)
    with pytest.raises(CfgenError, match="--negative must be one of dropped, source, not 'target'"):
        InferenceSettings(negative="target")


def test_untied_directions_leave_out_what_the_training_data_tie_to_the_attribute(
    dataset: Path, generator: Path, tmp_path: Path
) -> None:
    """Training records the ties (the fixture's digits and stroke colours at 0.9); an untied direction is
    predicted without them, for either negative; an attribute tied to nothing is edited as before."""
    pipeline, images, factual, target = background_edits(dataset, generator)
    model = pipeline.model
    assert model.ties == {"digit": ["fg_color"], "fg_color": ["digit"], "bg_color": [], "thickness": []}
    assert "guides each without the other): digit and fg_color." in (generator / "README.md").read_text()
    colour, digit = (model.schema.names.index(name) for name in ("fg_color", "digit"))
    target[:, colour] = (factual[:, colour] + 1) % 4
    t = pipeline.scheduler.timesteps[2]
    noisy = pipeline.scheduler.add_noise(images, torch.randn_like(images), t)
    untie = {"fg_color": ["digit"]}
    with torch.inference_mode():
        full = model.predict(noisy, t, target)
        without_digit = torch.ones_like(target, dtype=torch.bool)
        without_digit[:, digit] = False
        toward = model.predict(noisy, t, target, without_digit)
        without_both = without_digit.clone()
        without_both[:, colour] = False
        at_source = target.clone()
        at_source[:, colour] = factual[:, colour]
        expected = {
            "dropped": full + 2.0 * (toward - model.predict(noisy, t, target, without_both)),
            "source": full + 2.0 * (toward - model.predict(noisy, t, at_source, without_digit)),
        }
    for negative, wanted in expected.items():
        untied = model.guided_prediction(
            noisy, t, target, {"fg_color": 2.0}, factual if negative == "source" else None, untie
        )
        torch.testing.assert_close(untied, wanted, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(expected["dropped"], model.guided_prediction(noisy, t, target, {"fg_color": 2.0}))
    with torch.inference_mode():  # two guided attributes, each untied from the other: a hold on the digit
        without_colour = torch.ones_like(target, dtype=torch.bool)
        without_colour[:, colour] = False
        held = model.predict(noisy, t, target, without_colour) - model.predict(noisy, t, target, without_both)
    both = model.guided_prediction(noisy, t, target, {"fg_color": 2.0, "digit": 1.0}, None, model.ties)
    torch.testing.assert_close(both, expected["dropped"] + held, rtol=1e-4, atol=1e-4)

    settings = InferenceSettings(4, 1.0, {"fg_color": 3.0}, inversion="ddpm")
    path = pipeline.inversion_path(images, factual, settings)
    edits = {way: pipeline.decode(path, target, replace(settings, direction=way)) for way in DIRECTIONS}
    assert not torch.equal(edits["untied"], edits["joint"])
    background = {"guidance": {"bg_color": 3.0}}  # the background edit background_edits made, alone
    target[:, colour] = factual[:, colour]
    assert torch.equal(
        pipeline.decode(path, target, replace(settings, **background)),
        pipeline.decode(path, target, replace(settings, **background, direction="untied")),
    )
    with pytest.raises(CfgenError, match="--direction must be one of joint, untied, not 'apart'"):
        InferenceSettings(direction="apart")

    folder = tmp_path / "gen"
    shutil.copytree(generator, folder)
    old = {"steps": 4, "inversion_depth": 0.6, "guidance": 3.0, "localize": "edit", "negative": "dropped"}
    store_inference(folder, {"attributes": {"fg_color": old, "bg_color": {**old, "direction": "untied"}}})
    model = Generator.load(folder)
    assert settings_for(model, ("fg_color",)).direction == "joint"  # saved before the direction was a choice
    assert settings_for(model, ("fg_color", "bg_color")).direction == "untied"  # a joint edit: untied where any is
    assert settings_for(model, ("bg_color",), direction="joint").direction == "joint"  # what is given wins


def test_steps_before_a_late_guidance_start_can_drop_what_the_edit_changes(dataset: Path, generator: Path) -> None:
    """``before_guidance="dropped"``: until guidance starts, each row is decoded given what its edit keeps
    alone (its edited variables dropped), then guided as before; a row whose edit changes nothing, or a
    decoding guided from the first step, is decoded as under ``"target"``."""
    pipeline, images, factual, target = background_edits(dataset, generator)
    model = pipeline.model
    target[0] = factual[0]  # a null edit: nothing to drop
    settings = InferenceSettings(4, 1.0, {"bg_color": 3.0}, inversion="ddpm", guidance_start=0.5)
    path = pipeline.inversion_path(images, factual, settings)
    dropped = pipeline.decode(path, target, replace(settings, before_guidance="dropped"))
    with torch.inference_mode():
        sample = path.latents[-1]
        for step, t in enumerate(pipeline.decoding_timesteps(settings)):
            if step < 2:  # half of the 4 steps: the edited background dropped
                predicted = model.predict(sample, t, target, factual == target)
            else:
                predicted = model.guided_prediction(sample, t, target, {"bg_color": 3.0})
            sample = pipeline.ddpm_step(predicted, t, sample) + path.corrections[step]
    torch.testing.assert_close(dropped, sample, rtol=1e-5, atol=1e-5)
    given_target = pipeline.decode(path, target, settings)
    assert torch.equal(dropped[0], given_target[0])
    assert not torch.allclose(dropped[1:], given_target[1:], atol=1e-3)
    from_the_start = replace(settings, guidance_start=0.0)
    assert torch.equal(
        pipeline.decode(path, target, from_the_start),
        pipeline.decode(path, target, replace(from_the_start, before_guidance="dropped")),
    )
    with pytest.raises(CfgenError, match="--before-guidance must be one of target, dropped, not 'later'"):
        InferenceSettings(before_guidance="later")

    old = {"steps": 4, "inversion_depth": 0.6, "guidance": 3.0, "guidance_start": 0.5}
    first = {**old, "guidance_start": 0.0, "before_guidance": "dropped"}  # no step before guidance: moot
    model.inference = {
        "attributes": {"fg_color": old, "bg_color": {**old, "before_guidance": "dropped"}, "thickness": first}
    }
    assert settings_for(model, ("fg_color",)).before_guidance == "target"  # saved before it was a choice
    assert settings_for(model, ("fg_color", "bg_color")).before_guidance == "dropped"  # a joint edit: where any is
    assert settings_for(model, ("fg_color", "thickness")).before_guidance == "target"  # from a late start
    assert settings_for(model, ("bg_color",), before_guidance="target").before_guidance == "target"  # given wins


def test_settings_that_differ_in_decoding_share_one_abduction(dataset: Path, generator: Path) -> None:
    """The tuner decodes every guidance, start, negative and condition before guidance of a grid from one
    inversion and mask: the images are those each setting makes alone."""
    model, table = Generator.load(generator), read_imagefolder(dataset)
    requests = plan_requests(table, model.schema, parse_intervention("bg_color=random", model.schema), rows=[0, 1, 2])
    base = InferenceSettings(4, 1.0, {"bg_color": 3.0}, localize="edit", inversion="ddpm")
    late = replace(base, guidance_start=0.5)
    variants = [base, replace(base, guidance={"bg_color": 6.0}), replace(base, negative="source"), late,
                replace(late, before_guidance="dropped")]  # fmt: skip
    source = GeneratorSource(model, generator, base, "no")
    together = source.make_each(table, requests, variants)
    for settings, images in zip(variants, together, strict=True):
        assert np.array_equal(images, GeneratorSource(model, generator, settings, "no").make(table, requests))
    assert len({images.tobytes() for images in together}) == len(variants)  # each setting made its own edits
    with pytest.raises(ValueError, match="must share its steps, inversion_depth, inversion, localize"):
        source.make_each(table, requests, [replace(base, inversion_depth=0.5)])


def test_edit_friendly_inversion_reconstructs_and_draws_its_noise_from_each_image(
    dataset: Path, generator: Path
) -> None:
    pipeline, images, factual, target = background_edits(dataset, generator)
    settings = InferenceSettings(steps=6, inversion_depth=1.0, inversion="ddpm")
    path = pipeline.inversion_path(images, factual, settings)
    assert len(path.latents) == 7 and len(path.corrections) == 6 and torch.equal(path.latents[0], images)
    # decoding under the factual values retraces the path: the source back up to rounding
    assert (pipeline.decode(path, factual, settings) - images).abs().max() < 1e-4
    edited = pipeline.decode(path, target, settings)
    assert (edited - images).abs().max() > 0.05  # the target changes it
    # an image's noise is its own: the same in another batch, another image's differs
    alone = pipeline.inversion_path(images[2:3], factual[2:3], settings)
    assert torch.equal(alone.latents[-1], path.latents[-1][2:3])
    assert not torch.allclose(path.latents[-1][0], path.latents[-1][1])
    assert torch.equal(path.select([2, 2]).corrections[0], path.corrections[0][[2, 2]])
    # localized, the region outside the mask ends as the source, as with DDIM inversion
    local = replace(settings, guidance={"bg_color": 3.0}, localize=True)
    mask = pipeline.edit_mask(path, factual, target, local)
    outside = mask[-1].expand_as(images) == 0
    assert torch.equal(pipeline.edit(path, factual, target, local)[outside], images[outside])


def test_otsu_threshold_splits_two_levels() -> None:
    high = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    high[0, :, :3] = True  # 24 of 64 pixels
    high[1, :, :, 5:] = True
    values = torch.where(high, 0.9, 0.1) + 0.01 * torch.rand(high.shape)
    assert torch.equal(values > otsu_threshold(values), high)
