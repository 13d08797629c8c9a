"""Generator training: the loss goes down, the saved model round-trips, each deconfounding term acts,
checkpoints resume, outputs are protected, and two processes produce one generator."""

import argparse
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tensorboard_scalars, tensorboard_values, write_folder
from safetensors.torch import load_file

from cfgen.cli.train_generator import add_arguments, config_from_args
from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.data.adapters import open_dataset
from cfgen.data.cells import discrete_columns, effective_sample_size, group_balanced_weights
from cfgen.data.images import ImageFormat, check_images, load_images
from cfgen.data.table import MetadataTable
from cfgen.data.tensors import to_model_range
from cfgen.errors import CfgenError
from cfgen.generator.checkpoints import TRAINING_CONFIG_FILE, list_checkpoints
from cfgen.generator.config import PRESETS, TrainingConfig
from cfgen.generator.deconfounding import (
    CONSISTENCY_TERMS,
    ConsistencyObjective,
    ConsistencySettings,
    reweight_weights,
)
from cfgen.generator.model import CONFIG_FILE, PREDICTION_TYPES, Generator, predicted_clean, predicted_noise
from cfgen.generator.pipeline import save_generator
from cfgen.generator.self_training import Edits, accepted_edits, load_edits
from cfgen.generator.training import (
    Denoiser,
    TrainingProgress,
    check_schedule_resumable,
    denoising_loss,
    train_generator,
    training_loss,
)
from cfgen.judges import AttributeJudges, Judges, train_judges
from cfgen.judges.training import confounding_log_priors, shift

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.trains
TINY = {"label": "y", "preset": "tiny"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 training rows, label y (3 values) confounded with color, every (y, color, shape) cell present."""
    rows = [
        {"y": str(y), "color": color, "shape": shape, "split": "train"}
        for y in range(3)
        for color in ("red", "green")
        for shape in ("a", "b", "c")
    ]
    rows += [
        {"y": str(i % 3), "color": "red" if i % 3 == 0 else "green", "shape": "abc"[i % 3], "split": "train"}
        for i in range(18)
    ]
    rows.append({"y": "1", "color": "red", "shape": "a", "split": "test"})
    return write_folder(tmp_path_factory.mktemp("data") / "colors", rows)


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with both deconfounding choices: 4 steps, checkpoints at 2 and 4, a preview at 4."""
    out = tmp_path_factory.mktemp("runs") / "gen"
    return train_generator(dataset, out, **TINY, deconfound="reweight,consistency", sample_every=4)


def _batch(dataset: Path, prediction_type: str = "epsilon") -> tuple[Generator, torch.Tensor, torch.Tensor]:
    table = open_dataset(dataset)
    schema = table.schema("y")
    train = table.split("train")
    image_format = check_images(train)
    generator = Generator.create(schema, image_format, "tiny", prediction_type=prediction_type)
    images = to_model_range(load_images(train.image_paths, image_format))
    return generator, images, generator.conditions(train)


def test_training_steps_lower_the_loss(dataset: Path):
    torch.manual_seed(0)
    generator, images, conditions = _batch(dataset)
    model = Denoiser(generator)
    images, conditions = images[:16], conditions[:16]

    def loss() -> float:
        torch.manual_seed(1)  # the same noise and timesteps at every evaluation
        with torch.no_grad():
            return training_loss(model, generator.scheduler, images, conditions, 0.0, 5.0)[0].item()

    before = loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(30):
        total, _ = training_loss(model, generator.scheduler, images, conditions, 0.1, 5.0)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert loss() < 0.7 * before


def test_min_snr_weighting_lowers_only_the_clean_timesteps(dataset: Path):
    torch.manual_seed(0)
    generator, images, conditions = _batch(dataset)
    model = Denoiser(generator)

    def loss(snr_gamma: float) -> float:
        torch.manual_seed(1)  # the same noise, timesteps and dropout in every call
        with torch.no_grad():
            return denoising_loss(model, generator.scheduler, images, conditions, 0.1, snr_gamma).item()

    plain = loss(0.0)
    assert loss(1e9) == pytest.approx(plain, rel=1e-6)  # no timestep's SNR reaches 1e9: weights are all 1
    assert loss(5.0) < 0.99 * plain  # weights min(SNR, 5) / SNR <= 1, and < 1 for the clean timesteps drawn


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_the_objective_is_the_prediction_type_s_target(prediction_type: str, dataset: Path):
    """A model that outputs the exact noise, or the exact velocity, has no loss under its own prediction type
    and a large one under the other; the clean image follows from either exactly."""
    generator, images, conditions = _batch(dataset, prediction_type)
    scheduler = generator.scheduler
    alphas = scheduler.alphas_cumprod

    def oracle(predicts: str):
        def model(noisy: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor, keep: torch.Tensor):
            alpha = alphas[timesteps][:, None, None, None]
            noise = (noisy - alpha.sqrt() * images) / (1 - alpha).sqrt()
            return noise if predicts == "epsilon" else scheduler.get_velocity(images, noise, timesteps)

        return model

    for snr_gamma in (0.0, 5.0):
        own = denoising_loss(oracle(prediction_type), scheduler, images, conditions, 0.1, snr_gamma)
        other_type = next(other for other in PREDICTION_TYPES if other != prediction_type)
        other = denoising_loss(oracle(other_type), scheduler, images, conditions, 0.1, snr_gamma)
        assert own < 1e-6 < 1e-2 < other

    noise, timesteps = torch.randn_like(images), torch.randint(0, 900, (len(images),))  # where 1 / sqrt(a) is moderate
    noisy = scheduler.add_noise(images, noise, timesteps)
    output = oracle(prediction_type)(noisy, timesteps, conditions, None)
    alpha = alphas[timesteps][:, None, None, None]
    assert torch.allclose(predicted_clean(output, noisy, alpha, prediction_type), images, atol=1e-3)
    assert torch.allclose(predicted_noise(output, noisy, alpha, prediction_type), noise, atol=1e-4)

    # an imperfect model's loss: each image's squared error weighted by min(SNR, 5) / SNR, or / (SNR + 1)
    torch.manual_seed(4)
    loss = denoising_loss(lambda noisy, *_: torch.zeros_like(noisy), scheduler, images, conditions, 0.1, 5.0)
    torch.manual_seed(4)  # the same noise and timesteps, drawn in the same order
    noise, timesteps = torch.randn_like(images), torch.randint(0, 1000, (len(images),))
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(images, noise, timesteps)
    snr = alphas[timesteps] / (1 - alphas[timesteps])
    weights = snr.clamp(max=5.0) / (snr if prediction_type == "epsilon" else snr + 1)
    assert loss.item() == pytest.approx((target.pow(2).mean(dim=(1, 2, 3)) * weights).mean().item(), rel=1e-5)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_each_consistency_term_changes_the_gradients(prediction_type: str, dataset: Path):
    torch.manual_seed(0)
    generator, images, conditions = _batch(dataset, prediction_type)
    model = Denoiser(generator)
    schema = generator.schema
    columns = discrete_columns(schema)
    judges = AttributeJudges(3, [schema.names[i] for i in columns], [schema.variables[i].num_values for i in columns])
    judges.eval().requires_grad_(False)
    uint8 = load_images(open_dataset(dataset).split("train").image_paths, generator.image_format)
    everything = ConsistencySettings(
        edit_fraction=0.5, effectiveness_weight=1.0, preservation_weight=1.0, cycle_weight=1.0, contrastive_weight=1.0
    )

    def gradients(settings: ConsistencySettings | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        objective = None
        if settings is not None:
            objective = ConsistencyObjective(judges, schema, conditions, uint8, generator.scheduler, settings)
        model.zero_grad()
        torch.manual_seed(3)  # the same noise, timesteps, edits and contrastive pairs in every call
        total, parts = training_loss(model, generator.scheduler, images[:8], conditions[:8], 0.1, 5.0, objective)
        total.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), parts

    full, parts = gradients(everything)
    assert set(parts) == {"denoising", *CONSISTENCY_TERMS}
    assert all(torch.isfinite(value) and value > 0 for value in parts.values())
    plain, _ = gradients(None)
    assert not torch.allclose(full, plain)
    for term in CONSISTENCY_TERMS:
        without, parts = gradients(replace(everything, **{f"{term}_weight": 0.0}))
        assert term not in parts
        assert (full - without).abs().max() > 1e-6 * full.abs().max(), f"the {term} term has no effect"


def test_reweight_weights_follow_the_formula():
    codes = np.array([[0, 0], [0, 0], [0, 0], [0, 1], [1, 1], [1, 1]])
    # p(y=0) = 4/6, p(a=0) = p(a=1) = 3/6; cells (0,0): 3/6, (0,1): 1/6, (1,1): 2/6
    expected = np.array([4 / 6, 4 / 6, 4 / 6, 2.0, 0.5, 0.5])
    np.testing.assert_allclose(reweight_weights(codes, clip=20), expected)
    np.testing.assert_allclose(reweight_weights(codes, clip=1.5), np.minimum(expected, 1.5))
    assert effective_sample_size(expected) == pytest.approx(expected.sum() ** 2 / (expected**2).sum())
    assert effective_sample_size(np.ones(5)) == pytest.approx(5)
    balanced = group_balanced_weights(codes)
    np.testing.assert_allclose(balanced, [1 / 9, 1 / 9, 1 / 9, 1 / 3, 1 / 6, 1 / 6])  # each of 3 cells: 1/3
    with pytest.raises(CfgenError, match="reweight-clip"):
        reweight_weights(codes, clip=0.5)


def test_confounding_priors_say_what_the_other_variables_tell():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, 3000)
    tied = np.where(rng.random(3000) < 0.95, label, rng.integers(0, 3, 3000))  # the label's shortcut
    free = rng.integers(0, 2, 3000)  # independent of both
    codes = np.stack([label, tied, free], axis=1)
    label_prior, tied_prior, free_prior = (prior.exp() for prior in confounding_log_priors(codes, [3, 3, 2]))
    assert label_prior.shape == (3000, 3) and torch.allclose(label_prior.sum(1), torch.ones(3000))
    # the shortcut gives the label (and back) about as often as it agrees with it
    assert (label_prior.argmax(1).numpy() == label).mean() == pytest.approx((tied == label).mean(), abs=0.01)
    assert (tied_prior.argmax(1).numpy() == tied).mean() > 0.9
    assert torch.allclose(free_prior, torch.full_like(free_prior, 0.5), atol=0.05)  # nothing tells it
    # counted over group-balanced draws, where every (label, shortcut) cell is equally likely, the shortcut
    # tells the label no more than chance
    balanced = confounding_log_priors(codes, [3, 3, 2], group_balanced_weights(codes))[0].exp()
    assert torch.allclose(balanced.sum(1), torch.ones(3000))
    assert (balanced.argmax(1).numpy() == label).mean() == pytest.approx(1 / 3, abs=0.05)


def _bars(label: np.ndarray, color: np.ndarray, tint: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """8x8 images: the label is the row of a bar, the colour its channel, the tint the background's blue."""
    images = np.zeros((len(label), 8, 8, 3))
    images[..., 2] += 40 * tint[:, None, None]
    for i, (row, channel) in enumerate(zip(label, color, strict=True)):
        images[i, 1 + 2 * row : 3 + 2 * row, 1:7] = 60
        images[i, 1 + 2 * row : 3 + 2 * row, 1:7, channel] = 250
    return np.clip(images + rng.normal(0, 10, images.shape), 0, 255).astype(np.uint8)


def test_judges_read_the_label_on_combinations_the_confounding_never_showed():
    """The colour gives the label on 97% of rows, and the few other rows all have tint 0, so group-balanced
    draws still show the colour's label 80% of the time. Judges trained in a product with the confounding read
    the bar's row on (label, colour) pairs absent from training; without it they read the colour on 30-58%."""
    rng = np.random.default_rng(0)
    label, tint = rng.integers(0, 3, 600), rng.integers(0, 4, 600)
    color, off = label.copy(), rng.random(600) < 0.03
    color[off], tint[off] = (label[off] + 1) % 3, 0
    judges, record = train_judges(
        _bars(label, color, tint, rng), np.stack([label, color, tint], 1), ["y", "color", "tint"], [3, 3, 4], 100, 64
    )
    unseen_label = np.repeat(np.arange(3), 20)
    unseen_color = (unseen_label + 2) % 3
    with torch.no_grad():
        _, logits = judges(to_model_range(_bars(unseen_label, unseen_color, rng.integers(0, 4, 60), rng)))
    read = logits[0].argmax(1).numpy()
    assert "naive Bayes" in record["product_of_experts"]
    assert (read == unseen_label).mean() >= 0.6
    assert (read == unseen_color).mean() <= 0.1


def test_trained_generator_round_trips_with_its_record(trained: Path, dataset: Path, tmp_path: Path):
    generator = Generator.load(trained)
    # the saved weights are the EMA weights of the last step, bit for bit
    ema = torch.load(trained / "checkpoints" / "checkpoint-4" / "custom_checkpoint_0.pkl", weights_only=True)
    for saved, shadow in zip(Denoiser(generator).parameters(), ema["shadow_params"], strict=True):
        assert torch.equal(saved, shadow)
    save_generator(generator, tmp_path / "again")
    again = Generator.load(tmp_path / "again")
    sample, conditions = torch.randn(4, 3, 8, 8), generator.conditions(open_dataset(dataset).split("train"))[:4]
    t = torch.tensor([10, 200, 500, 900])
    assert torch.equal(generator.predict(sample, t, conditions), again.predict(sample, t, conditions))
    from diffusers import UNet2DModel  # after cfgen, which makes torchvision importable

    plain = UNet2DModel.from_pretrained(trained, subfolder="unet")
    assert torch.equal(
        plain(sample, t, class_labels=generator.encoder(conditions)).sample,
        generator.predict(sample, t, conditions),
    )

    record = generator.training
    assert record["preset"] == "tiny" and record["steps"] == 4 and record["seed"] == 0
    assert record["prediction_type"] == "v_prediction" == generator.scheduler.config.prediction_type
    assert record["deconfound"] == ["reweight", "consistency"]
    codes = generator.conditions(open_dataset(dataset).split("train"))[:, discrete_columns(generator.schema)]
    ess = effective_sample_size(reweight_weights(codes.long().numpy(), clip=20))
    assert record["reweight"]["effective_sample_size"] == pytest.approx(ess)
    assert set(record["final_loss"]) == {"loss", "denoising", *CONSISTENCY_TERMS}
    judges, judges_record = AttributeJudges.load(trained / "judges")
    assert judges.names == ["y", "color", "shape"] and judges_record["cells"] == 18
    assert set(load_file(trained / "judges" / "model.safetensors")) == set(judges.state_dict())
    assert json.loads((trained / "run.json").read_text())["config"]["deconfound"] == ["reweight", "consistency"]
    assert (trained / "samples" / "step-000004.png").is_file()
    logged = tensorboard_scalars(trained / "logs")
    assert {"loss", "denoising", "lr", "cycle", "reweight/effective_sample_size"} <= logged
    assert "preview" in tensorboard_scalars(trained / "logs", "images")  # the preview grid, as an image


def test_judges_saved_with_one_convolution_per_block_still_load(tmp_path: Path):
    old = AttributeJudges(3, ["y", "color"], [2, 3], convolutions=1).eval()
    old.save(tmp_path, {"steps": 1})
    config = json.loads((tmp_path / "config.json").read_text())
    del config["convolutions"]  # as judges were saved before they had two
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, record = AttributeJudges.load(tmp_path)
    assert loaded.convolutions == 1 and record == {"steps": 1}
    images = torch.rand(4, 3, 28, 28)
    assert torch.equal(loaded(images)[0], old(images)[0])


def test_report_to_none_logs_nothing(dataset: Path, tmp_path: Path):
    out = train_generator(dataset, tmp_path / "gen", **TINY, steps=2, checkpoint_every=0, report_to="none")
    assert (out / "cfgen_generator.json").is_file() and not (out / "logs").exists()
    with pytest.raises(CfgenError, match="valid: tensorboard, wandb, none"):
        train_generator(dataset, tmp_path / "other", **TINY, report_to="mlflow")


def test_resume_continues_from_the_latest_checkpoint(trained: Path, tmp_path: Path):
    interrupted = tmp_path / "gen"
    shutil.copytree(trained, interrupted)
    stored = json.loads((interrupted / "training_config.json").read_text())
    del stored["lr_schedule"]  # as a run stored before the option existed, which used a constant rate
    del stored["prediction_type"]  # likewise: such a run predicted the noise
    stored["learning_rate"] = 5e-4  # as a run started before the preset changed: it goes on as it began
    (interrupted / "training_config.json").write_text(json.dumps(stored))
    (interrupted / CONFIG_FILE).unlink()  # as if stopped after the checkpoint at step 2
    shutil.rmtree(interrupted / "checkpoints" / "checkpoint-4")
    judges = (interrupted / "judges" / "model.safetensors").stat().st_mtime_ns
    dataset = json.loads((trained / "training_config.json").read_text())["data"]

    with pytest.raises(CfgenError, match="different seed"):
        train_generator(dataset, interrupted, **TINY, deconfound="reweight,consistency", seed=1, resume=True)
    train_generator(dataset, interrupted, **TINY, deconfound="reweight,consistency", resume=True)
    record = Generator.load(interrupted).training
    assert record["resumed_from_step"] == 2 and record["steps"] == 4 and record["learning_rate"] == 5e-4
    assert record["prediction_type"] == "epsilon" == Generator.load(interrupted).scheduler.config.prediction_type
    assert [step for step, _ in list_checkpoints(interrupted)] == [2, 4]
    assert (interrupted / "judges" / "model.safetensors").stat().st_mtime_ns == judges  # reused, not retrained
    with pytest.raises(CfgenError, match="finished generator"):
        train_generator(dataset, interrupted, **TINY, deconfound="reweight,consistency", resume=True)


def test_cosine_schedule_decays_to_zero_at_the_last_step(dataset: Path, tmp_path: Path):
    out = train_generator(dataset, tmp_path / "gen", **TINY, lr_schedule="cosine")
    rate = PRESETS["tiny"]["learning_rate"]
    expected = [rate * (1 + math.cos(math.pi * step / 4)) / 2 for step in (1, 2, 3, 4)]
    assert tensorboard_values(out / "logs", "lr") == pytest.approx(expected, abs=1e-9)
    with pytest.raises(CfgenError, match="decay ends at --steps"):
        train_generator(dataset, out, **TINY, lr_schedule="cosine", steps=6, resume=True)
    with pytest.raises(CfgenError, match=r"different lr_schedule \('cosine' -> 'constant'\)"):
        train_generator(dataset, out, **TINY, lr_schedule="constant", steps=6, resume=True)
    with pytest.raises(CfgenError, match="finished generator") as refused:
        train_generator(dataset, out, **TINY, lr_schedule="cosine", resume=True)
    assert "raise --steps" not in str(refused.value)  # its rate has decayed to zero


def test_command_line_options_reach_the_configuration():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        shlex.split(
            "--data d --out o --label y --attributes color,shape --preset tiny --steps 7 --mixed-precision no "
            "--deconfound reweight,consistency --cycle-weight 0.5 --consistency-min-timestep 50 --edit-fraction 0.5 "
            "--resume --snr-gamma 2 --lr-schedule cosine --prediction-type epsilon"
        )
    )
    config = config_from_args(args).resolved()
    assert (config.steps, config.batch_size, config.architecture) == (7, 8, "tiny")  # flag, then preset values
    assert config.deconfound == ("reweight", "consistency") and config.attributes == ["color", "shape"]
    assert config.consistency == ConsistencySettings(cycle_weight=0.5, min_timestep=50, edit_fraction=0.5)
    assert config.resume and not config.overwrite and config.mixed_precision == "no" and config.snr_gamma == 2
    assert config.lr_schedule == "cosine" and config.prediction_type == "epsilon"
    with pytest.raises(CfgenError, match="unknown --prediction-type 'x0'; valid: epsilon, v_prediction"):
        TrainingConfig(data="d", out="o", prediction_type="x0").resolved()


def test_existing_output_is_refused_without_resume_or_overwrite(dataset: Path, tmp_path: Path):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "stray.txt").write_text("mine")
    with pytest.raises(CfgenError, match="already exists"):
        train_generator(dataset, out, **TINY)
    assert (out / "stray.txt").is_file()
    with pytest.raises(CfgenError, match="only one"):
        train_generator(dataset, out, **TINY, resume=True, overwrite=True)
    with pytest.raises(CfgenError, match="nope"):
        train_generator(dataset, tmp_path / "new", preset="tiny", label="nope")
    assert not (tmp_path / "new").exists()  # inputs are checked before the folder is made
    train_generator(dataset, out, **TINY, steps=2, overwrite=True)
    assert not (out / "stray.txt").exists() and (out / CONFIG_FILE).is_file()
    assert Generator.load(out).image_format == ImageFormat((8, 8), "RGB")


def test_two_processes_write_one_generator(dataset: Path, tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "gen"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        str(REPO / "train_generator.py"),
        "--data",
        str(dataset),
        "--out",
        str(out),
        "--label",
        "y",
        "--preset",
        "tiny",
        "--deconfound",
        "reweight,consistency",
        "--lr-schedule",
        "cosine",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    record = Generator.load(out).training
    assert record["num_processes"] == 2 and record["effective_batch_size"] == 16 and record["steps"] == 4
    assert result.stdout.count("wrote ") == 1
    assert not list(out.glob(".*"))  # no staging folders left behind
    # its decay counts the steps of both processes: one process may not resume it
    interrupted = tmp_path / "interrupted"
    shutil.copytree(out, interrupted)
    (interrupted / CONFIG_FILE).unlink()  # as if stopped after the checkpoint at step 2
    shutil.rmtree(interrupted / "checkpoints" / "checkpoint-4")
    stored = (interrupted / TRAINING_CONFIG_FILE).read_bytes()
    refusal = r"--resume with 1 process\(es\): the run .* trained with 2, .* resume it with 2"
    with pytest.raises(CfgenError, match=refusal):
        train_generator(dataset, interrupted, label="y", preset="tiny", deconfound="reweight,consistency", resume=True)
    assert (interrupted / TRAINING_CONFIG_FILE).read_bytes() == stored  # the refused run changed nothing


def test_a_schedule_that_counts_processes_resumes_only_with_as_many(tmp_path: Path) -> None:
    def check(schedule: str, warmup: int, step: int, before: int, now: int) -> None:
        config = TrainingConfig(data="d", out="o", preset="tiny", lr_schedule=schedule, warmup_steps=warmup)
        check_schedule_resumable(config, TrainingProgress(step=step, processes=before), now, tmp_path)

    check("cosine", 0, 5, 2, 2)  # the same count
    check("cosine", 0, 5, 0, 2)  # a checkpoint from before the count was kept
    check("constant", 50, 60, 2, 1)  # past the warm-up under either count
    check("constant", 50, 120, 1, 2)
    for refused in (("cosine", 0, 5, 2, 1), ("constant", 50, 10, 1, 2), ("constant", 50, 60, 1, 2)):
        with pytest.raises(CfgenError, match=f"resume it with {refused[3]}"):  # in a warm-up under the new count
            check(*refused)


def test_shift_moves_each_image_by_a_few_pixels() -> None:
    images = torch.zeros(64, 2, 28, 28)
    images[:, :, 10:18, 12:16] = 1.0  # a bar away from the edges
    moved = shift(images, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape and torch.equal(moved.sum((1, 2, 3)), images.sum((1, 2, 3)))
    rows = moved[:, 0].amax(2).argmax(1) - 10
    columns = moved[:, 0].amax(1).argmax(1) - 12
    assert rows.abs().max() <= 2 and columns.abs().max() <= 2  # 28 // 14
    assert len(set(zip(rows.tolist(), columns.tolist(), strict=True))) > 10  # many different shifts
    assert torch.equal(moved[:, 0], moved[:, 1])  # the channels of an image move together


@pytest.mark.parametrize("preset", [name for name in PRESETS if name != "tiny"])
def test_every_preset_resolves_and_trains(preset: str, dataset: Path, tmp_path: Path) -> None:
    config = TrainingConfig(data=str(dataset), out=str(tmp_path / "gen"), preset=preset).resolved()
    assert {name: getattr(config, name) for name in PRESETS[preset]} == PRESETS[preset]
    short = {"steps": 2, "batch_size": 4, "checkpoint_every": 0, "sample_every": 0, "mixed_precision": "no"}
    out = train_generator(dataset, tmp_path / "gen", label="y", preset=preset, **short)
    record = json.loads((out / CONFIG_FILE).read_text())["training"]
    assert record["preset"] == preset and record["architecture"] == PRESETS[preset]["architecture"]


def test_self_training_starts_from_a_generator_and_adds_the_edits_its_judges_accept(
    trained: Path, dataset: Path, tmp_path: Path
) -> None:
    edits = generate_counterfactuals(
        dataset, "color=random", tmp_path / "cf", generator=trained, split="train", steps=2, progress=False
    )
    out = train_generator(
        dataset, tmp_path / "self", **TINY, deconfound="reweight", init_from=trained, counterfactuals=edits,
        steps=1, learning_rate=1e-12, checkpoint_every=0,
    )  # fmt: skip
    base, self_trained = Generator.load(trained), Generator.load(out)
    for before, after in zip(Denoiser(base).parameters(), Denoiser(self_trained).parameters(), strict=True):
        torch.testing.assert_close(after, before)  # started from the trained weights (the rate moves nothing)
    assert self_trained.inference == base.inference  # and keeps the settings chosen for them
    record = self_trained.training
    table = open_dataset(dataset)
    schema = table.schema("y")
    judges, judges_record = AttributeJudges.load(out / "judges")
    reader = Judges(schema, judges, check_images(table), {"pixel": [], **judges_record})
    rows = np.flatnonzero(table.column("split") == "train")
    accepted = accepted_edits(
        reader, schema, load_edits(edits, dataset, table, rows, check_images(table), None),
        load_images(table.image_paths[rows], check_images(table)),
    )  # fmt: skip
    assert record["self_training"]["edits"] == len(rows) and record["self_training"]["accepted"] == accepted.sum()
    assert record["data"]["images"] == len(rows) + accepted.sum()
    assert record["init_from"] == str(trained.resolve()) and record["steps"] == 1


def test_self_training_accepts_an_edit_where_the_judges_read_its_row() -> None:
    """Judges of bars (label: the bar's row, colour: its channel, tint: the background) read exact edits of the
    colour as their rows say; an edit that kept the old colour, or moved the bar, is refused."""
    rng = np.random.default_rng(0)
    label, color, tint = rng.integers(0, 3, 600), rng.integers(0, 3, 600), rng.integers(0, 4, 600)
    network, record = train_judges(
        _bars(label, color, tint, rng), np.stack([label, color, tint], 1), ["y", "color", "tint"], [3, 3, 4], 150, 64
    )
    values = {"y": ["0", "1", "2"], "color": ["c0", "c1", "c2"], "tint": ["t0", "t1", "t2", "t3"]}
    schema = MetadataTable(np.arange(4).astype(str), {k: np.resize(v, 4) for k, v in values.items()}, "t").schema("y")
    source = {"y": np.array([0, 1, 2, 0, 1, 2]), "color": np.array([0, 1, 2, 2, 0, 1]), "tint": np.arange(6) % 4}
    target = (source["color"] + 1) % 3
    edit_y, edit_color = source["y"].copy(), target.copy()
    edit_color[[1, 4]] = source["color"][[1, 4]]  # the colour stayed
    edit_y[[2, 5]] = (source["y"][[2, 5]] + 1) % 3  # the bar moved
    table = MetadataTable(
        np.array([f"e{i}" for i in range(6)]),
        {
            "y": np.array([str(v) for v in source["y"]]),
            "color": np.array([f"c{v}" for v in target]),
            "tint": np.array([f"t{v}" for v in source["tint"]]),
            "cf_intervened": np.array(["color"] * 6),
        },
        "edits",
    )
    images = _bars(source["y"], source["color"], source["tint"], rng)
    edits = Edits(table, _bars(edit_y, edit_color, source["tint"], rng), np.arange(6))
    reader = Judges(schema, network, ImageFormat((8, 8), "RGB"), {"pixel": [], **record})
    assert accepted_edits(reader, schema, edits, images).tolist() == [True, False, False, True, False, False]


def test_self_training_refuses_edits_of_other_rows_and_a_generator_of_other_variables(
    trained: Path, dataset: Path, tmp_path: Path
) -> None:
    of_test = generate_counterfactuals(
        dataset, "color=random", tmp_path / "cf", generator=trained, split="test", steps=2, progress=False
    )
    with pytest.raises(CfgenError, match=r"edits row 36 of .*, which is not a training row"):
        train_generator(dataset, tmp_path / "a", **TINY, init_from=trained, counterfactuals=of_test)
    with pytest.raises(CfgenError, match=r"--init-from .* was trained on other variables or values than the data"):
        train_generator(dataset, tmp_path / "b", **TINY, attributes=["color"], init_from=trained)
    with pytest.raises(CfgenError, match=r"--init-from .* predicts v_prediction, this run epsilon"):
        train_generator(dataset, tmp_path / "c", **TINY, init_from=trained, prediction_type="epsilon")
    assert not any((tmp_path / name).exists() for name in "abc")  # refused before anything was written
