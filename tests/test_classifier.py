"""Debiased classifiers: every method end to end, the objectives' key properties, evaluation,
model selection, bad input, checkpoints and a two-process run. Tiny colored-digit data throughout."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from accelerate import Accelerator
from conftest import tensorboard_scalars
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from cfgen.backbones import build_backbone
from cfgen.classifier import evaluate_classifier
from cfgen.classifier import predict as predict_images
from cfgen.classifier.config import METHOD_NAMES, ClassifierConfig
from cfgen.classifier.data import load_training_data, to_model_input
from cfgen.classifier.evaluation import format_statistic, select_epoch, split_metrics, statistic, summarize_splits
from cfgen.classifier.methods import (
    ERM,
    CounterfactualAugmentation,
    CounterfactualRegularizer,
    GroupDRO,
    log_probability_gradient,
)
from cfgen.classifier.training import (
    CHECKPOINT_FORMAT,
    Classifier,
    load_classifier,
    paired_sampler,
    predict,
    save_checkpoint,
    train_classifiers,
)
from cfgen.cli import main
from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.data.table import METADATA_FILE, read_imagefolder
from cfgen.datasets.colored_mnist.rendering import ColoredMNISTConfig, make_colored_mnist
from cfgen.errors import CfgenError

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.trains
SIZES = {"train": 120, "validation": 60, "test": 80, "test_anti": 40}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("classifier")


@pytest.fixture(scope="module")
def dataset(work: Path) -> Path:
    return make_colored_mnist(ColoredMNISTConfig(strength=0.9, sizes=SIZES, seed=0), work / "data")


@pytest.fixture(scope="module")
def counterfactuals(work: Path, dataset: Path) -> Path:
    return generate_counterfactuals(
        dataset, "fg_color=random", work / "cf", generator="exact", split="train", progress=False
    )


@pytest.fixture(scope="module")
def mixed_counterfactuals(work: Path, dataset: Path, counterfactuals: Path) -> Path:
    """The exact folder with the label of every even source row's counterfactual changed: label-changing
    counterfactuals, as a generator that edits the digit would write them."""
    folder = work / "cf-mixed"
    shutil.copytree(counterfactuals, folder)
    with (folder / METADATA_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if int(row["cf_source_row"]) % 2 == 0:
            row["digit"] = str((int(row["digit"]) + 1) % 10)
    with (folder / METADATA_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def train(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = main(["train-classifier", *argv])
    return code, capsys.readouterr().err


def common(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(dataset), "--out", str(out), "--epochs", "2", "--min-group-size", "2", *extra]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_writes_metrics_and_checkpoints(
    method: str, dataset: Path, counterfactuals: Path, work: Path, capsys: pytest.CaptureFixture
):
    out = work / f"clf-{method}"
    seeds = "0,1" if method == "erm" else "0"
    arguments = ["--method", method, "--spurious", "fg_color", "--seeds", seeds]
    code, err = train(capsys, *common(dataset, out, *arguments, "--counterfactuals", str(counterfactuals)))
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["schema"] == "cfgen.classifier.metrics/1"
    assert metrics["method"] == method and metrics["spurious"] == ["fg_color"]
    assert set(metrics["splits"]) == {"validation", "test", "test_anti"}
    test = metrics["splits"]["test"]
    for key in ("accuracy", "worst_group_accuracy"):
        assert set(test[key]) == {"mean", "std", "n", "values"}
        assert 0 <= test[key]["mean"] <= 1
    assert len(test["accuracy"]["values"]) == len(seeds.split(","))
    group = next(iter(test["groups"].values()))
    assert group["count"] >= 1 and set(group["accuracy"]) == {"mean", "std", "n", "values"}
    assert sum(g["count"] for g in test["groups"].values()) == SIZES["test"]
    for run in metrics["per_seed"]:
        assert run["splits"]["test"]["accuracy"] == test["accuracy"]["values"][metrics["per_seed"].index(run)]
        assert run["selected_epoch"] in (1, 2) and len(run["history"]) == 2
        assert (out / f"seed-{run['seed']}" / "model.safetensors").is_file()
    if method == "erm":
        values = test["accuracy"]["values"]
        assert test["accuracy"]["mean"] == pytest.approx(np.mean(values))
        assert test["accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
    uses = method in ("cf-augment", "cf-reg", "gradient-supervision", "cf-contrastive")
    assert (metrics["data"]["counterfactuals"] is not None) == uses
    assert json.loads((out / "run.json").read_text())["config"]["method"] == method


def test_checkpoint_is_safetensors_and_reloads_the_selected_model(dataset: Path, work: Path):
    out = work / "clf-api"
    config = ClassifierConfig(
        data=str(dataset), method="erm", out=str(out), spurious=("fg_color",), epochs=3, seeds=(4,), progress=False
    )
    metrics = train_classifiers(config)
    assert json.loads(json.dumps(metrics)) == json.loads((out / "metrics.json").read_text())
    with safe_open(out / "seed-4" / "model.safetensors", framework="pt") as weights:
        assert "head.weight" in set(weights.keys())
    # tensorboard: each epoch's losses and validation scores, under the seed
    logged = tensorboard_scalars(out / "logs")
    assert {"seed-4/train/loss", "seed-4/train/ce", "seed-4/train/validation_accuracy"} <= logged
    model, checkpoint = load_classifier(out)
    assert checkpoint["seed"] == 4 and checkpoint["label"]["name"] == "digit"
    assert checkpoint["selected_epoch"] == metrics["per_seed"][0]["selected_epoch"]
    data = load_training_data(dataset, None, ("fg_color",))
    for split in ("validation", "test"):
        predictions = predict(Accelerator(), model, data.evaluation[split])
        accuracy = float((predictions == data.evaluation[split].labels.numpy()).mean())
        assert accuracy == metrics["per_seed"][0]["splits"][split]["accuracy"]

    # the public functions score as training did (in float32: a bf16 run's figures move a little); predict
    # reads PIL images
    evaluated = evaluate_classifier(out, dataset, splits=["validation", "test"])
    for split in ("validation", "test"):
        trained = metrics["per_seed"][0]["splits"][split]
        if metrics["mixed_precision"] == "no":
            for key in ("accuracy", "worst_group_accuracy", "groups"):
                assert evaluated["splits"][split][key] == trained[key]
        assert evaluated["splits"][split]["accuracy"] == pytest.approx(trained["accuracy"], abs=0.05)
    table = read_imagefolder(dataset).split("test")
    images = [Image.open(path) for path in table.image_paths[:5]]
    found = predict_images(out, images)
    assert found.probabilities.shape == (5, 10) and np.allclose(found.probabilities.sum(1), 1, atol=1e-5)
    with torch.no_grad():  # the model itself, in float32
        expected = model(to_model_input(data.evaluation["test"].head(5).images, torch.device("cpu")))[1].argmax(1)
    assert found.labels == [found.classes[k] for k in expected.tolist()]
    with pytest.raises(CfgenError, match="images are 14x14 RGB; this classifier works on 28x28 RGB images"):
        predict_images(out, [image.resize((14, 14)) for image in images])
    report = work / "clf-api-eval.json"
    assert main(["evaluate-classifier", "--model", str(out), "--data", str(dataset), "--splits", "test",
                 "--out", str(report)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["splits"]["test"]["accuracy"] == evaluated["splits"]["test"]["accuracy"]
    assert main(["evaluate-classifier", "--model", str(out), "--data", str(dataset), "--splits", "holdout"]) == 2


def test_resnet_checkpoints_load_into_torchvision(tmp_path: Path) -> None:
    model = Classifier(build_backbone("resnet18", 3), 3).eval()
    config = {"format": CHECKPOINT_FORMAT, "backbone": "resnet18", "in_channels": 3, "label": {"values": list("abc")}}
    save_checkpoint(tmp_path / "seed-0", model, config)
    plain = torchvision.models.resnet18(num_classes=3).eval()
    plain.load_state_dict(load_file(tmp_path / "seed-0" / "model.safetensors"))  # strict: every key matches
    images = torch.rand(2, 3, 32, 32)
    reloaded, _ = load_classifier(tmp_path)
    assert torch.allclose(plain(images), model(images)[1]) and torch.allclose(reloaded(images)[1], model(images)[1])


def _gradients(objective, model: Classifier, batch) -> torch.Tensor:
    model.zero_grad()
    loss, _ = objective.loss(model, batch)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.backbone.parameters()])


def test_cf_reg_pairs_same_label_counterfactuals_only(dataset: Path, mixed_counterfactuals: Path):
    data = load_training_data(dataset, None, ("fg_color",), (mixed_counterfactuals,))
    assert data.counterfactuals.label_changing == SIZES["train"] // 2
    accelerator = Accelerator()
    rows = torch.arange(data.n_train)
    relation = data.relation(same_label=True)
    for seed in range(5):
        partners, has = relation.sample(rows, torch.Generator().manual_seed(seed))
        assert torch.equal(has, rows % 2 == 1)  # even rows have only a label-changing counterfactual
        assert torch.equal(data.pool.labels[partners[has]], data.pool.labels[rows[has]])

    torch.manual_seed(0)
    model = Classifier(build_backbone("small-cnn", 3), 10).eval()  # eval: batch-norm ignores the partners

    def gradients(objective, selected: torch.Tensor) -> torch.Tensor:
        objective.setup(data, accelerator, torch.Generator().manual_seed(0))
        return _gradients(objective, model, data.pool.batch(selected, torch.device("cpu")))

    odd, even = rows[1::2][:16], rows[::2][:16]
    unpenalised = gradients(CounterfactualRegularizer(0.0, "l2", "features"), odd)
    assert not torch.allclose(unpenalised, gradients(ERM(), odd), atol=1e-4)  # the counterfactuals are trained on
    for distance, layer in (("l2", "features"), ("cosine", "features"), ("l2", "logits"), ("cosine", "logits")):
        penalised = gradients(CounterfactualRegularizer(1.0, distance, layer), odd)
        assert not torch.allclose(penalised, unpenalised, atol=1e-4), (distance, layer)
    # even rows have label-changing counterfactuals only: nothing is paired, it is plain ERM
    assert torch.allclose(gradients(CounterfactualRegularizer(5.0, "l2", "features"), even), gradients(ERM(), even))


def test_pair_share_draws_that_share_of_batches_from_paired_rows(dataset: Path, mixed_counterfactuals: Path):
    data = load_training_data(dataset, None, ("fg_color",), (mixed_counterfactuals,))
    accelerator, generator = Accelerator(), torch.Generator().manual_seed(0)
    regularizer, augmentation = CounterfactualRegularizer(1.0, "l2", "features"), CounterfactualAugmentation()
    regularizer.setup(data, accelerator, generator)
    augmentation.setup(data, accelerator, generator)
    paired = regularizer.paired_rows()
    assert torch.equal(paired, torch.arange(data.n_train) % 2 == 1)  # same-label counterfactuals: odd rows only
    assert ERM().paired_rows() is None
    assert paired_sampler(augmentation.paired_rows(), 0.8) is None  # every row has some counterfactual
    assert paired_sampler(paired, None) is None
    torch.manual_seed(0)
    drawn = torch.tensor([row for _ in range(50) for row in paired_sampler(paired, 0.8)])
    assert len(drawn) == 50 * data.n_train
    assert abs(paired[drawn].float().mean().item() - 0.8) < 0.03


def test_group_dro_weights_climb_toward_the_worst_group(dataset: Path):
    data = load_training_data(dataset, None, ("fg_color",))
    objective = GroupDRO(step_size=0.5)
    objective.setup(data, Accelerator(), torch.Generator())
    uniform = 1 / data.groups.count
    assert torch.allclose(objective.weights, torch.full_like(objective.weights, uniform))
    losses = torch.tensor([0.2, 0.2, 3.0, 1.0, 1.0], requires_grad=True)
    groups = torch.tensor([0, 0, 7, 12, 12])
    previous = objective.weights[7].item()
    for _ in range(4):
        robust = objective.robust_loss(losses, groups)
        assert objective.weights[7] > previous  # the worst group gains weight every step
        previous = objective.weights[7].item()
    weights = objective.weights
    assert weights[7] > weights[12] > weights[0] > weights[1]  # group 1 is absent: it only loses weight
    assert weights.sum().item() == pytest.approx(1.0)
    expected = weights[0] * 0.2 + weights[7] * 3.0 + weights[12] * 1.0
    assert robust.item() == pytest.approx(expected.item(), rel=1e-5)
    robust.backward()
    assert losses.grad[2] == pytest.approx(weights[7].item(), rel=1e-5)


def test_metrics_on_a_hand_made_example():
    names = ["y=0,c=a", "y=0,c=b", "y=1,c=a", "y=1,c=b"]
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    groups = np.array([0, 0, 0, 0, 1, 2, 3, 3, 3, 3])
    predictions = np.array([0, 0, 0, 1, 0, 0, 1, 1, 0, 0])
    result = split_metrics(predictions, labels, groups, names, min_group_size=2)
    assert result["size"] == 10 and result["accuracy"] == pytest.approx(0.6)
    assert result["groups"] == {
        "y=0,c=a": {"count": 4, "correct": 3, "accuracy": 0.75},
        "y=0,c=b": {"count": 1, "correct": 1, "accuracy": 1.0},
        "y=1,c=a": {"count": 1, "correct": 0, "accuracy": 0.0},
        "y=1,c=b": {"count": 4, "correct": 2, "accuracy": 0.5},
    }
    # y=1,c=a (accuracy 0, one image) is below min_group_size and does not compete for the worst
    assert result["worst_group"] == "y=1,c=b" and result["worst_group_accuracy"] == 0.5
    assert split_metrics(predictions, labels, groups, names)["worst_group_accuracy"] == 0.0
    assert split_metrics(predictions, labels, groups, names, min_group_size=5)["worst_group_accuracy"] is None
    no_groups = split_metrics(predictions, labels, np.full(10, -1), [])
    assert no_groups["accuracy"] == pytest.approx(0.6) and no_groups["groups"] == {}

    other = split_metrics(np.ones(10, dtype=int), labels, groups, names, min_group_size=2)
    summary = summarize_splits([{"test": result}, {"test": other}])["test"]
    assert summary["accuracy"]["values"] == [0.6, 0.5]
    assert summary["accuracy"]["mean"] == pytest.approx(0.55)
    assert summary["accuracy"]["std"] == pytest.approx(np.std([0.6, 0.5], ddof=1))
    assert summary["worst_group_accuracy"]["values"] == [0.5, 0.0]
    assert summary["groups"]["y=1,c=b"] == {"count": 4, "accuracy": statistic([0.5, 1.0])}
    assert statistic([None, None]) is None and statistic([0.3])["std"] == 0.0
    assert format_statistic(statistic([0.6, 0.5])) == "0.550 ± 0.071"
    assert format_statistic(statistic([0.3])) == "0.300" and format_statistic(None) == "-"


def test_model_selection_rule():
    def epoch(number: int, accuracy: float, worst: float | None) -> dict:
        return {"epoch": number, "validation": {"accuracy": accuracy, "worst_group_accuracy": worst}}

    history = [epoch(1, 0.9, 0.2), epoch(2, 0.7, 0.5), epoch(3, 0.8, 0.5), epoch(4, 0.95, 0.4)]
    assert select_epoch(history) == 2  # best worst group; the tie on it goes to the better accuracy
    history = [epoch(1, 0.8, 0.5), epoch(2, 0.8, 0.5)]
    assert select_epoch(history) == 0  # a full tie goes to the earlier epoch
    history = [epoch(1, 0.6, None), epoch(2, 0.9, None), epoch(3, 0.7, None)]
    assert select_epoch(history) == 1  # no group big enough: average accuracy
    assert select_epoch([{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]) == 2  # no validation split: last epoch


def _foreign_counterfactuals(work: Path) -> Path:
    other = make_colored_mnist(ColoredMNISTConfig(strength=0.9, sizes=SIZES, seed=1), work / "other-data")
    return generate_counterfactuals(
        other, "fg_color=random", work / "other-cf", generator="exact", split="train", progress=False
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("foreign", "was made from another dataset"),
        ("no-counterfactuals", "cf-reg needs counterfactuals"),
        ("dro-without-spurious", "group-dro needs group labels"),
        ("unknown-method", "unknown method 'ridge'; valid: erm, cf-augment, cf-reg"),
        ("unknown-backbone", "unknown backbone 'vgg'; valid: small-cnn, resnet18, resnet50"),
        ("bad-seeds", "--seeds takes comma-separated whole numbers"),
        ("bad-pair-share", "--pair-share must be between 0 and 1"),
        ("exists", "already exists"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    case: str, message: str, dataset: Path, counterfactuals: Path, work: Path, capsys: pytest.CaptureFixture
):
    out = work / f"bad-{case}"
    arguments = {
        "foreign": ["--method", "cf-reg", "--spurious", "fg_color", "--counterfactuals", ""],
        "no-counterfactuals": ["--method", "cf-reg", "--spurious", "fg_color"],
        "dro-without-spurious": ["--method", "group-dro"],
        "unknown-method": ["--method", "ridge"],
        "unknown-backbone": ["--method", "erm", "--backbone", "vgg"],
        "bad-seeds": ["--method", "erm", "--seeds", "0,one"],
        "bad-pair-share": ["--method", "erm", "--pair-share", "1"],
        "exists": ["--method", "erm"],
    }[case]
    if case == "foreign":
        arguments[-1] = str(_foreign_counterfactuals(work))
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    code, err = train(capsys, *common(dataset, out, *arguments))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not list(work.glob(f".{out.name}*"))  # no staging folder left behind


def test_two_processes_finish(dataset: Path, mixed_counterfactuals: Path, work: Path):
    out = work / "clf-two-processes"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = "-m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no"
    # half of the rows have a same-label counterfactual: --pair-share's sampler is sharded too
    arguments = ["--method", "cf-reg", "--spurious", "fg_color", "--counterfactuals", str(mixed_counterfactuals)]
    arguments += ["--pair-share", "0.7"]
    command = [
        sys.executable,
        *launch.split(),
        "--dynamo_backend",
        "no",
        str(REPO / "train_classifier.py"),
        *common(dataset, out, *arguments, "--batch-size", "16"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["splits"]["test"]["size"] == SIZES["test"]
    assert sum(g["count"] for g in metrics["splits"]["test"]["groups"].values()) == SIZES["test"]
    assert (out / "seed-0" / "model.safetensors").is_file()


def test_log_probability_gradient_is_autograds() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 4)
    features = torch.randn(5, 6, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 1, 2])
    scores = torch.log_softmax(head(features), dim=1).gather(1, labels[:, None]).sum()
    (expected,) = torch.autograd.grad(scores, features)
    assert torch.allclose(log_probability_gradient(head(features), labels, head.weight), expected, atol=1e-6)
