"""Training the counterfactual generator with Accelerate, written like accelerate's example scripts.

The same code runs on a CPU, one GPU, several GPUs or several machines (``accelerate launch
train_generator.py ...``): only the main process writes files, logs and shows progress. The output
folder, on a filesystem every process sees:

    training_config.json           the resolved configuration; --resume checks it
    checkpoints/checkpoint-N/      accelerate save_state (model, optimizer, EMA, RNG, step), latest few
    judges/                        the frozen attribute classifiers of --deconfound consistency
    samples/step-N.png             previews: originals, factual decode, one edited row per attribute
    logs/                          tensorboard, when it is installed
    unet/ attribute_encoder/ scheduler/ run.json cfgen_generator.json
                                   the final generator (EMA weights); cfgen_generator.json is written
                                   last, so a folder holding it is complete
"""

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset, WeightedRandomSampler
from tqdm.auto import tqdm

from cfgen.data.adapters import open_dataset
from cfgen.data.cells import discrete_columns, editable_columns, effective_sample_size, label_groups, pair_counts
from cfgen.data.images import ImageFormat, check_images, load_images, to_model_range, to_uint8
from cfgen.data.schema import Schema, check_informative
from cfgen.data.table import MetadataTable
from cfgen.errors import CfgenError
from cfgen.generator.deconfounding import (
    JUDGES_FOLDER,
    ConsistencyObjective,
    ConsistencySettings,
    parse_deconfound,
    reweight_weights,
)
from cfgen.generator.inference import DEFAULT_GUIDANCE, InferenceSettings
from cfgen.generator.model import ARCHITECTURES, CONFIG_FILE, Generator
from cfgen.generator.pipeline import CounterfactualPipeline, save_generator
from cfgen.grids import labelled_grid, save_grid
from cfgen.io import check_writable, create_folder, finish_trackers, scalar_record, write_json, write_run_record
from cfgen.judges import AttributeJudges, load_or_train
from cfgen.runtime import (
    log_image,
    make_accelerator,
    resolve_mixed_precision,
    resolve_report_to,
    stop_if_diverged,
)

TRAINING_CONFIG_FILE = "training_config.json"
CHECKPOINTS_FOLDER = "checkpoints"
SAMPLES_FOLDER = "samples"
MAX_GRAD_NORM = 1.0
PREVIEW_EXAMPLES = 8

# Values a preset fills in; an explicit flag or keyword wins. quick: minutes on a 2-core CPU for
# colored MNIST (6,000 images of 28 px); standard: the quick model trained ten times longer, for
# users without a GPU who want counterfactuals to use (quality rose steadily with training length,
# docs/generator.md); full: a GPU run; tiny: seconds, for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "architecture": "tiny",
        "steps": 4,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "ema_decay": 0.9,
        "checkpoint_every": 2,
        "sample_every": 0,
        "log_every": 1,
        "judge_steps": 4,
        "judge_batch_size": 8,
    },
    "quick": {
        "architecture": "quick",
        "steps": 400,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "warmup_steps": 50,
        "ema_decay": 0.999,
        "checkpoint_every": 200,
        "sample_every": 200,
        "log_every": 10,
        "judge_steps": 200,
        "judge_batch_size": 128,
    },
    "standard": {
        "architecture": "quick",
        "steps": 4000,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "warmup_steps": 50,
        "ema_decay": 0.999,
        "checkpoint_every": 500,
        "sample_every": 1000,
        "log_every": 10,
        "judge_steps": 1000,
        "judge_batch_size": 128,
    },
    "full": {
        "architecture": "full",
        "steps": 60_000,
        "batch_size": 128,
        "learning_rate": 2e-4,
        "warmup_steps": 1000,
        "ema_decay": 0.9999,
        "checkpoint_every": 5000,
        "sample_every": 5000,
        "log_every": 50,
        "judge_steps": 5000,
        "judge_batch_size": 256,
    },
}
# Settings that may differ when a run is resumed; everything else must match the stored configuration.
RESUMABLE_CHANGES = frozenset(
    {
        "out",
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "sample_every",
        "log_every",
        "mixed_precision",
        "report_to",
        "resume",
        "overwrite",
    }
)


@dataclass
class TrainingConfig:
    """Everything a training run depends on; ``None`` means "the preset's value"."""

    data: str
    out: str
    label: str | None = None
    attributes: list[str] | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    data_format: str = "auto"
    split: str | None = None  # default: train if the dataset has that split, else every row
    resize: int | None = None
    preset: str = "quick"
    architecture: str | None = None
    steps: int | None = None
    batch_size: int | None = None  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None
    warmup_steps: int | None = None
    ema_decay: float | None = None
    checkpoint_every: int | None = None  # 0: never
    keep_checkpoints: int = 2
    sample_every: int | None = None  # 0: never
    log_every: int | None = None
    judge_steps: int | None = None
    judge_batch_size: int | None = None
    deconfound: str | tuple[str, ...] = "none"
    condition_dropout: float = 0.1
    snr_gamma: float = 5.0  # 0: the plain epsilon objective
    timestep_bias_multiplier: float = 1.0  # 1: timesteps drawn uniformly
    timestep_bias_portion: float = 0.6  # the low-noise share of timesteps the multiplier favours
    reweight_clip: float = 20.0
    consistency: ConsistencySettings = field(default_factory=ConsistencySettings)
    mixed_precision: str = "auto"
    report_to: str = "tensorboard"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False

    def resolved(self) -> "TrainingConfig":
        """The preset filled in, the choices parsed and every value checked."""
        if self.preset not in PRESETS:
            raise CfgenError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        filled = {
            name: default if getattr(self, name) is None else getattr(self, name)
            for name, default in PRESETS[self.preset].items()
        }
        config = replace(
            self,
            **filled,
            data=str(Path(self.data).resolve()),
            out=str(self.out),
            deconfound=parse_deconfound(self.deconfound),
        )
        config._check()
        return config

    def _check(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise CfgenError(f"unknown architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        minimums = {
            "steps": 1,
            "batch_size": 1,
            "gradient_accumulation_steps": 1,
            "warmup_steps": 0,
            "checkpoint_every": 0,
            "keep_checkpoints": 1,
            "sample_every": 0,
            "log_every": 1,
            "judge_steps": 1,
            "judge_batch_size": 1,
        }
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise CfgenError(f"--{name.replace('_', '-')} must be at least {minimum}, not {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise CfgenError(f"--learning-rate must be positive, not {self.learning_rate}")
        if not 0 <= self.ema_decay < 1:
            raise CfgenError(f"--ema-decay must be in [0, 1), not {self.ema_decay}")
        if not 0 <= self.condition_dropout < 1:
            raise CfgenError(f"--condition-dropout must be in [0, 1), not {self.condition_dropout}")
        if self.snr_gamma < 0:
            raise CfgenError(f"--snr-gamma must be >= 0 (0 turns the weighting off), not {self.snr_gamma}")
        if self.timestep_bias_multiplier <= 0:
            raise CfgenError(f"--timestep-bias-multiplier must be positive, not {self.timestep_bias_multiplier}")
        if not 0 < self.timestep_bias_portion <= 1:
            raise CfgenError(f"--timestep-bias-portion must be in (0, 1], not {self.timestep_bias_portion}")
        resolve_mixed_precision(self.mixed_precision)  # refuses unknown choices and fp16 without CUDA
        resolve_report_to(self.report_to)
        if self.resume and self.overwrite:
            raise CfgenError("--resume continues the run in --out and --overwrite replaces it; pass only one")

    def record(self) -> dict[str, Any]:
        """JSON-ready form, for training_config.json and run.json."""
        return json.loads(json.dumps(asdict(self)))


def train_generator(data: str | Path, out: str | Path, **options: Any) -> Path:
    """Python entry point: ``train_generator("data/cmnist", "runs/gen", preset="tiny", deconfound="reweight")``."""
    return train(TrainingConfig(data=str(data), out=str(out), **options))


class Denoiser(nn.Module):
    """The generator's trainable parts behind one ``forward``, which DDP and mixed-precision autocast wrap."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.parts = generator.modules()
        self.generator = generator

    def forward(
        self, sample: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.generator.predict_noise(sample, timesteps, conditions, keep)


@dataclass
class TrainingProgress:
    """The optimizer step, the epoch and the batches of it consumed; checkpointed with the rest of the
    state (register_for_checkpointing), so that a resumed run continues with the batch it would have drawn."""

    step: int = 0
    epoch: int = 0
    batches: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
        self.epoch, self.batches = int(state.get("epoch", 0)), int(state.get("batches", 0))


def timestep_weights(num_train_timesteps: int, multiplier: float, portion: float) -> torch.Tensor:
    """Sampling weights of the training timesteps: the lowest ``portion`` of them ``multiplier`` times as likely.

    An edit inverts the source only to ``depth`` x T and decodes from there, so the model is used on
    the low-noise timesteps alone; favouring them spends more of the training on what editing visits.
    """
    weights = torch.ones(num_train_timesteps)
    weights[: round(portion * num_train_timesteps)] *= multiplier
    return weights


def denoising_loss(
    model: nn.Module,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    conditions: torch.Tensor,
    condition_dropout: float,
    snr_gamma: float,
    timestep_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDPM epsilon objective; each variable is independently replaced by its null state with ``condition_dropout``.

    With ``snr_gamma`` > 0 each image's error is weighted by min(SNR(t), gamma) / SNR(t) (min-SNR
    weighting, Hang et al. 2023), which stops the nearly clean timesteps from dominating (its effect
    on edits is in docs/generator.md). Timesteps are uniform unless ``timestep_weights`` are given.
    """
    noise = torch.randn_like(images)
    if timestep_weights is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), device=images.device)
    else:
        timesteps = torch.multinomial(timestep_weights, len(images), replacement=True).to(images.device)
    noisy = scheduler.add_noise(images, noise, timesteps)
    keep = torch.rand(conditions.shape, device=conditions.device) >= condition_dropout
    errors = F.mse_loss(model(noisy, timesteps, conditions, keep).float(), noise, reduction="none").mean(dim=(1, 2, 3))
    if not snr_gamma:
        return errors.mean()
    snr = compute_snr(scheduler, timesteps)
    return (errors * snr.clamp(max=snr_gamma) / snr).mean()


def training_loss(
    model: nn.Module,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    conditions: torch.Tensor,
    condition_dropout: float,
    snr_gamma: float,
    consistency: ConsistencyObjective | None = None,
    timestep_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss a training step minimises, and its parts for logging (the consistency terms before their weights)."""
    denoising = denoising_loss(model, scheduler, images, conditions, condition_dropout, snr_gamma, timestep_weights)
    parts = {"denoising": denoising}
    total = parts["denoising"]
    if consistency is not None:
        terms = consistency(model, images, conditions)
        weights = consistency.settings.weights()
        total = total + sum(weights[term] * value for term, value in terms.items())
        parts.update(terms)
    return total, parts


def train(config: TrainingConfig) -> Path:
    """Train a generator; returns the output folder, complete when this returns."""
    config = config.resolved()
    out = Path(config.out)
    accelerator = make_accelerator(
        config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=resolve_report_to(config.report_to),
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        # the encoder's null vector for continuous variables is unused when every variable is discrete
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    resume_from = resume_point(out, config)
    set_seed(config.seed)

    # Data: every training image in memory, as uint8.
    data = load_training_data(config, progress=accelerator.is_local_main_process)
    table, schema, images = data.table, data.schema, data.images
    generator = Generator.create(schema, data.image_format, config.architecture, table)
    conditions = generator.conditions(table)
    if len(table) < config.batch_size * accelerator.num_processes:
        raise CfgenError(
            f"{len(table)} training images are fewer than one batch per process "
            f"({config.batch_size} x {accelerator.num_processes}); lower --batch-size"
        )
    if "consistency" in config.deconfound:
        config.consistency.check(schema, generator.scheduler.config.num_train_timesteps)
    codes = conditions[:, discrete_columns(schema)].long().numpy()
    record: dict[str, Any] = {}

    # Deconfounding: a sampler toward the product of marginals, and/or the consistency objective.
    sampler_weights = None
    if "reweight" in config.deconfound:
        sampler_weights = reweight_weights(codes, config.reweight_clip)
        ess = effective_sample_size(sampler_weights)
        record["reweight"] = {
            "clip": config.reweight_clip,
            "effective_sample_size": ess,
            "ess_fraction": ess / len(codes),
        }
        accelerator.print(f"reweighting: effective sample size {ess:.0f} of {len(codes)} images")
    _set_up_output(accelerator, out, config)  # every input is checked: now the folder may change
    if config.resume and resume_from is None:
        accelerator.print(f"--resume: {out} has no checkpoint yet; starting from step 0")
    consistency = None
    if "consistency" in config.deconfound:
        judges, judges_record = _judges(accelerator, out, schema, images, codes, config)
        consistency = ConsistencyObjective(
            judges, schema, conditions, images, generator.scheduler.alphas_cumprod, config.consistency
        )
        record["consistency"] = {**asdict(config.consistency), "judges": {"folder": JUDGES_FOLDER, **judges_record}}

    # Model, optimizer, data loader and schedule, prepared by accelerate; EMA of the prepared weights.
    model = Denoiser(generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    lr_scheduler = get_scheduler(
        "constant_with_warmup", optimizer, num_warmup_steps=config.warmup_steps * accelerator.num_processes
    )
    shuffle = torch.Generator().manual_seed(config.seed)  # the same order on every process; accelerate shards it
    dataset = TensorDataset(torch.arange(len(table)))
    if sampler_weights is None:
        sampler = RandomSampler(dataset, generator=shuffle)
    else:
        sampler = WeightedRandomSampler(sampler_weights.tolist(), len(dataset), replacement=True, generator=shuffle)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True, generator=shuffle)
    sampled_timesteps = None
    if config.timestep_bias_multiplier != 1:
        timesteps_total = generator.scheduler.config.num_train_timesteps
        sampled_timesteps = timestep_weights(
            timesteps_total, config.timestep_bias_multiplier, config.timestep_bias_portion
        )
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema = EMAModel(
        accelerator.unwrap_model(model).parameters(), decay=config.ema_decay, use_ema_warmup=True, power=3 / 4
    )
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(ema, progress)
    set_seed(config.seed, device_specific=True)  # different noise on each process
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        ema.to(accelerator.device)
        accelerator.print(f"resumed from {resume_from} at step {progress.step}")
    resumed_from_step = progress.step or None
    accelerator.init_trackers("train_generator", config=scalar_record(config.record()))
    if "reweight" in record:
        accelerator.log({"reweight/effective_sample_size": record["reweight"]["effective_sample_size"]}, step=0)
    preview_rows, preview_edits = preview_setup(schema, conditions, config.seed)

    started = time.perf_counter()
    with tqdm(
        total=config.steps, initial=progress.step, desc="training", disable=not accelerator.is_local_main_process
    ) as progress_bar:  # closed before an error is printed
        window: dict[str, torch.Tensor] = {}  # loss sums since the last log, kept on the device (no sync per step)
        window_batches = 0
        logged: dict[str, float] = {}
        while progress.step < config.steps:
            # each epoch's order follows from its number alone, so a resumed run draws the batches it would have
            shuffle.manual_seed(config.seed + progress.epoch)
            epoch = accelerator.skip_first_batches(loader, progress.batches) if progress.batches else loader
            for (rows,) in epoch:
                progress.batches += 1
                rows = rows.cpu()
                batch = to_model_range(images[rows.numpy()]).to(accelerator.device)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        loss, parts = training_loss(
                            model,
                            generator.scheduler,
                            batch,
                            conditions[rows].to(accelerator.device),
                            config.condition_dropout,
                            config.snr_gamma,
                            consistency,
                            sampled_timesteps,
                        )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        gradient_norm = accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                        try:
                            learning_rate = lr_scheduler.get_last_lr()[0]
                            stop_if_diverged(accelerator, gradient_norm, progress.step + 1, learning_rate)
                        except CfgenError:
                            if resume_from is None and accelerator.is_main_process:
                                shutil.rmtree(out, ignore_errors=True)  # a fresh run leaves nothing behind
                            raise
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                for name, value in {"loss": loss, **parts}.items():
                    window[name] = window.get(name, 0.0) + value.detach().float()
                window_batches += 1
                if not accelerator.sync_gradients:
                    continue
                ema.step(accelerator.unwrap_model(model).parameters())
                progress.step += 1
                progress_bar.update(1)
                step, last = progress.step, progress.step == config.steps
                if step % config.log_every == 0 or last:
                    logged = _log(accelerator, window, window_batches, lr_scheduler.get_last_lr()[0], step)
                    progress_bar.set_postfix(loss=f"{logged['loss']:.4f}")
                    window, window_batches = {}, 0
                if config.checkpoint_every and (step % config.checkpoint_every == 0 or last):
                    save_checkpoint(accelerator, out, step, config.keep_checkpoints)
                if config.sample_every and (step % config.sample_every == 0 or last) and accelerator.is_main_process:
                    with _ema_weights(ema, accelerator.unwrap_model(model)), accelerator.autocast():
                        grid = preview_grid(
                            generator,
                            to_model_range(images[preview_rows]).to(accelerator.device),
                            conditions[preview_rows].to(accelerator.device),
                            preview_edits,
                        )
                    save_grid(grid, out / SAMPLES_FOLDER / f"step-{step:06d}.png")
                    log_image(accelerator, "preview", grid, step)
                if last:
                    break
            else:
                progress.epoch, progress.batches = progress.epoch + 1, 0

    # The final model: EMA weights, the training choices, and the completion marker last.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ema.copy_to(accelerator.unwrap_model(model).parameters())
        generator.training = {
            "architecture": config.architecture,
            "preset": config.preset,
            "deconfound": list(config.deconfound),
            "objective": "DDPM epsilon prediction",
            "snr_gamma": config.snr_gamma,
            "timestep_bias": {"multiplier": config.timestep_bias_multiplier, "portion": config.timestep_bias_portion},
            "steps": progress.step,
            "resumed_from_step": resumed_from_step,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "num_processes": accelerator.num_processes,
            "effective_batch_size": config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes,
            "learning_rate": config.learning_rate,
            "ema_decay": config.ema_decay,
            "condition_dropout": config.condition_dropout,
            "mixed_precision": accelerator.mixed_precision,
            "data": {"path": config.data, "split": data.split, "images": len(table), "resize": config.resize},
            "final_loss": logged,
            "seconds": round(time.perf_counter() - started, 1),  # this run's loop (after a resume: since it)
            **record,
        }
        save_final(generator, out, config.record(), config.seed)
    accelerator.wait_for_everyone()
    finish_trackers(accelerator)
    return out


@dataclass
class TrainingData:
    """The training rows, the schema (inferred over every split, so vocabularies are complete) and the images."""

    table: MetadataTable
    split: str
    schema: Schema
    image_format: ImageFormat
    images: np.ndarray  # uint8 (N, H, W, C)


def load_training_data(config: TrainingConfig, progress: bool = False) -> TrainingData:
    full = open_dataset(config.data, config.data_format)
    schema = full.schema(config.label, config.attributes, config.kinds)
    split = config.split or ("train" if "train" in full.splits else "all")
    table = full.split(split)
    check_informative(schema, schema.encode(table.columns), f"the {split} rows of {config.data}")
    image_format = check_images(table, config.resize)
    return TrainingData(table, split, schema, image_format, load_images(table.image_paths, image_format, progress))


def resume_point(out: Path, config: TrainingConfig) -> Path | None:
    """Apply the output-folder rules, writing nothing; returns the checkpoint to resume from, if any.

    A run is refused when ``out`` exists, unless it is resumed (an interrupted run, or a finished one
    given more --steps) or replaced (--overwrite).
    """
    if config.resume and out.exists():
        stored = out / TRAINING_CONFIG_FILE
        if not stored.is_file():
            raise CfgenError(
                f"{out} is not a generator training folder (it has no {TRAINING_CONFIG_FILE}); cannot --resume it"
            )
        _check_resumable(json.loads(stored.read_text()), config.record(), out)
        checkpoints = list_checkpoints(out)
        if (out / CONFIG_FILE).is_file():
            done = checkpoints[-1][0] if checkpoints else None
            if done is None or done >= config.steps:
                raise CfgenError(
                    f"{out} is a finished generator (trained for {done or 'an unknown number of'} steps); "
                    "raise --steps to continue it, or pass --overwrite to train it again"
                )
        if checkpoints and checkpoints[-1][0] > config.steps:
            raise CfgenError(
                f"--steps {config.steps} is below step {checkpoints[-1][0]} that the run in {out} already reached; "
                f"give --steps {checkpoints[-1][0]} or more"
            )
        return checkpoints[-1][1] if checkpoints else None
    if out.exists() and not config.overwrite:
        raise CfgenError(
            f"output folder {out} already exists; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --out"
        )
    check_writable(out)
    return None


def _set_up_output(accelerator: Accelerator, out: Path, config: TrainingConfig) -> None:
    """Create (or replace) the folder and store the configuration, on the main process."""
    accelerator.wait_for_everyone()  # every process has checked the folder before it changes
    if accelerator.is_main_process:
        if config.overwrite:
            shutil.rmtree(out, ignore_errors=True)
        create_folder(out)
        (out / CONFIG_FILE).unlink(missing_ok=True)  # incomplete until the new final model is written
        write_json(out / TRAINING_CONFIG_FILE, config.record())
    accelerator.wait_for_everyone()


def _check_resumable(stored: dict[str, Any], current: dict[str, Any], out: Path) -> None:
    changed = [name for name in current if name not in RESUMABLE_CHANGES and stored.get(name) != current[name]]
    if changed:
        name = changed[0]
        raise CfgenError(
            f"--resume with a different {name} ({stored.get(name)!r} -> {current[name]!r}) than the run in {out}; "
            f"only {', '.join(sorted(RESUMABLE_CHANGES - {'out', 'resume', 'overwrite'}))} may change"
        )


def _judges(
    accelerator: Accelerator, out: Path, schema: Schema, images: np.ndarray, codes: np.ndarray, config: TrainingConfig
) -> tuple[AttributeJudges, dict]:
    """The judges of ``out/judges``, trained there once, by the main process, on the training images (the
    generator knows nothing else about the data); every process, and a --resume, loads them."""
    columns = discrete_columns(schema)
    names = [schema.names[i] for i in columns]
    num_values = [schema.variables[i].num_values for i in columns]
    key = {"variables": names, "num_values": num_values, "seed": config.seed}

    def load() -> tuple[AttributeJudges, dict]:
        return load_or_train(
            out / JUDGES_FOLDER, key, lambda: (images, codes, names, num_values), config.judge_steps,
            config.judge_batch_size, config.seed, accelerator.device, progress=True,
        )  # fmt: skip

    if accelerator.is_main_process:
        load()
    accelerator.wait_for_everyone()
    judges, record = load()
    if judges.names != names or judges.num_values != num_values:
        trained_for = ", ".join(judges.names)
        raise CfgenError(f"the judges in {out / JUDGES_FOLDER} were trained for other variables ({trained_for})")
    return judges, record


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a training folder as (step, folder), oldest first."""
    found = []
    for path in (out / CHECKPOINTS_FOLDER).glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit():
            found.append((int(step), path))
    return sorted(found)


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int) -> None:
    """accelerate save_state into a hidden folder, renamed when every process has written its part."""
    partial = out / CHECKPOINTS_FOLDER / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = partial.with_name(f"checkpoint-{step}")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for _, old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def save_final(generator: Generator, out: Path, config: dict[str, Any], seed: int) -> None:
    """Write the generator beside the training files; cfgen_generator.json goes in last, atomically."""
    staging = out / ".generator.partial"
    shutil.rmtree(staging, ignore_errors=True)
    save_generator(generator, staging)
    for part in staging.iterdir():
        if part.name != CONFIG_FILE:
            shutil.rmtree(out / part.name, ignore_errors=True)
            os.replace(part, out / part.name)
    write_run_record(out, config, seed, generator.training.get("mixed_precision"))
    os.replace(staging / CONFIG_FILE, out / CONFIG_FILE)
    staging.rmdir()


def _log(
    accelerator: Accelerator, window: dict[str, torch.Tensor], batches: int, lr: float, step: int
) -> dict[str, float]:
    """Average the window's losses over its batches and over processes, then log them."""
    names = sorted(window)
    values = torch.stack([window[name] for name in names]) / batches
    averaged = dict(zip(names, accelerator.reduce(values, reduction="mean").tolist(), strict=True))
    accelerator.log({**averaged, "lr": lr}, step=step)
    return averaged


@contextmanager
def _ema_weights(ema: EMAModel, model: nn.Module) -> Iterator[None]:
    """Swap the EMA weights into ``model`` for the block, then put the training weights back."""
    parameters = list(model.parameters())
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        yield
    finally:
        ema.restore(parameters)


def preview_setup(
    schema: Schema, conditions: torch.Tensor, seed: int
) -> tuple[np.ndarray, list[tuple[str, torch.Tensor]]]:
    """Fixed preview examples, and for each discrete attribute their conditions with that attribute set to
    the value it was rarest with, given the label, in training: the hard case of a confounded model."""
    codes = conditions.long().numpy()
    rows = np.sort(np.random.default_rng(seed).choice(len(codes), min(PREVIEW_EXAMPLES, len(codes)), replace=False))
    groups, num_groups = label_groups(schema, codes)
    edits = []
    for column in editable_columns(schema):
        counts = pair_counts(groups, codes[:, column], num_groups, schema.variables[column].num_values).astype(float)
        counts = counts[groups[rows]]
        counts[np.arange(len(rows)), codes[rows, column]] = np.inf
        edited = conditions[rows].clone()
        edited[:, column] = torch.from_numpy(counts.argmin(1)).float()
        edits.append((schema.names[column], edited))
    return rows, edits


@torch.no_grad()
def preview_grid(
    generator: Generator, images: torch.Tensor, conditions: torch.Tensor, edits: list[tuple[str, torch.Tensor]]
) -> np.ndarray:
    """Labelled rows: the originals (captioned with their label), their reconstruction (inverted and decoded
    under their own conditions), then one row of counterfactuals per edit, each captioned with the value it
    set, made as ``cfgen generate`` makes them with its default settings."""
    schema = generator.schema
    pipeline = CounterfactualPipeline.from_generator(generator)
    path = pipeline.inversion_path(images, conditions, InferenceSettings())

    def captions(name: str, rows: torch.Tensor) -> list[str]:
        values = schema[name].values
        return [f"{name}={values[int(code)]}" for code in rows[:, schema.names.index(name)]]

    rows = [(images, captions(schema.label.name, conditions), "source"),
            (pipeline.decode(path, conditions, InferenceSettings()), [""] * len(images), "reconstruction")]  # fmt: skip
    for name, target in edits:
        edited = pipeline.decode(path, target, InferenceSettings(guidance={name: DEFAULT_GUIDANCE}))
        rows.append((edited, captions(name, target), f"edit {name}"))
    cells = [list(zip(to_uint8(tiles), texts, strict=True)) for tiles, texts, _ in rows]
    return labelled_grid(cells, [label for _, _, label in rows])
