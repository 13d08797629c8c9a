"""Training the counterfactual generator with Accelerate, written like accelerate's example scripts.

The same code runs on a CPU, one GPU, several GPUs or several machines (``accelerate launch
train_generator.py ...``): only the main process writes files, logs and shows progress. The output
folder, on a filesystem every process sees:

    training_config.json           the resolved configuration; --resume checks it
    checkpoints/checkpoint-N/      accelerate save_state (model, optimizer, EMA, RNG, step), latest few
    judges/                        the frozen attribute classifiers of --deconfound consistency and of
                                   self-training (--counterfactuals)
    samples/step-N.png             previews: originals, factual decode, one edited row per attribute
    logs/                          tensorboard, when it is installed
    unet/ attribute_encoder/ scheduler/ run.json cfgen_generator.json
                                   the final generator (EMA weights); cfgen_generator.json is written
                                   last, so a folder holding it is complete
"""

import shutil
import time
from dataclasses import asdict, dataclass
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
from cfgen.data.cells import discrete_columns, effective_sample_size
from cfgen.data.images import ImageFormat, check_images, load_images
from cfgen.data.schema import Schema, check_informative
from cfgen.data.table import MetadataTable
from cfgen.data.tensors import to_model_range
from cfgen.errors import CfgenError
from cfgen.generator.checkpoints import (
    resume_point,
    save_checkpoint,
    save_final,
    set_up_output,
    start_output,
    stored_config,
)
from cfgen.generator.config import LR_SCHEDULES, TrainingConfig
from cfgen.generator.deconfounding import (
    JUDGES_FOLDER,
    ConsistencyObjective,
    reweight_weights,
)
from cfgen.generator.model import Generator, variable_ties
from cfgen.generator.previews import SAMPLES_FOLDER, ema_weights, preview_grid, preview_setup
from cfgen.generator.self_training import ACCEPTANCE, Edits, accepted_edits, load_edits, start_from
from cfgen.grids import save_grid
from cfgen.io import finish_trackers, scalar_record
from cfgen.judges import AttributeJudges, Judges, load_or_train
from cfgen.runtime import (
    log_image,
    make_accelerator,
    resolve_report_to,
    stop_if_diverged,
)

MAX_GRAD_NORM = 1.0


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
        return self.generator.predict(sample, timesteps, conditions, keep)


@dataclass
class TrainingProgress:
    """The optimizer step, the epoch and the batches of it consumed, and the number of processes that
    took them; checkpointed with the rest of the state (register_for_checkpointing), so that a resumed
    run continues with the batch it would have drawn."""

    step: int = 0
    epoch: int = 0
    batches: int = 0
    processes: int = 0  # 0: a checkpoint written before the count was kept

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batches": self.batches, "processes": self.processes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
        self.epoch, self.batches = int(state.get("epoch", 0)), int(state.get("batches", 0))
        self.processes = int(state.get("processes", 0))


def check_schedule_resumable(config: TrainingConfig, progress: TrainingProgress, processes: int, out: Path) -> None:
    """A prepared learning-rate schedule counts the steps of every process: where it depends on that
    count (a decay, or a warm-up not over under the old count or the new one), resuming with another
    number of processes would follow another schedule."""
    if not progress.processes or progress.processes == processes:
        return
    as_counted_now = progress.step * progress.processes / processes  # the step the restored schedule is at
    if config.lr_schedule != "constant" or min(progress.step, as_counted_now) < config.warmup_steps:
        raise CfgenError(
            f"--resume with {processes} process(es): the run in {out} trained with {progress.processes}, and its "
            f"learning-rate schedule ({config.lr_schedule}, warm-up {config.warmup_steps} steps) counts the steps "
            f"of every process; resume it with {progress.processes}"
        )


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
    """DDPM objective on the scheduler's ``prediction_type`` (the noise or the velocity); each variable is
    independently replaced by its null state with ``condition_dropout``.

    With ``snr_gamma`` > 0 each image's error is weighted by min(SNR(t), gamma) / SNR(t), or / (SNR(t) + 1)
    for the velocity (min-SNR weighting, Hang et al. 2023), which stops the nearly clean timesteps from
    dominating (its effect on edits is in docs/generator.md). Timesteps are uniform unless
    ``timestep_weights`` are given.
    """
    noise = torch.randn_like(images)
    if timestep_weights is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), device=images.device)
    else:
        timesteps = torch.multinomial(timestep_weights, len(images), replacement=True).to(images.device)
    noisy = scheduler.add_noise(images, noise, timesteps)
    keep = torch.rand(conditions.shape, device=conditions.device) >= condition_dropout
    velocity = scheduler.config.prediction_type == "v_prediction"
    target = scheduler.get_velocity(images, noise, timesteps) if velocity else noise
    errors = F.mse_loss(model(noisy, timesteps, conditions, keep).float(), target, reduction="none").mean(dim=(1, 2, 3))
    if not snr_gamma:
        return errors.mean()
    snr = compute_snr(scheduler, timesteps)
    return (errors * snr.clamp(max=snr_gamma) / (snr + 1 if velocity else snr)).mean()


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
    config = config.resolved(stored_config(Path(config.out)) if config.resume else None)
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
    if config.init_from:
        generator = start_from(config.init_from, schema, data.image_format, config.architecture, config.prediction_type)
        generator.ties = variable_ties(schema, table)  # what this run's rows tie
    else:
        generator = Generator.create(schema, data.image_format, config.architecture, table, config.prediction_type)
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
    set_up_output(accelerator, out, config)  # every input is checked: now the folder may change
    if resume_from is None:
        start_output(accelerator, out, config)
    if config.resume and resume_from is None:
        accelerator.print(f"--resume: {out} has no checkpoint yet; starting from step 0")

    # The generator's judges (consistency training, self-training); the edits they accept join the training rows.
    if data.edits is not None or "consistency" in config.deconfound:
        judges, judges_record = _judges(accelerator, out, schema, images, codes, config)
    if data.edits is not None:
        reader = Judges(schema, judges, data.image_format, {"pixel": [], **judges_record})
        accepted = accepted_edits(reader, schema, data.edits, images)
        table = MetadataTable.concat([table, data.edits.table.select(accepted)])
        images = np.concatenate([images, data.edits.images[accepted]])
        conditions = generator.conditions(table)
        codes = conditions[:, discrete_columns(schema)].long().numpy()
        record["self_training"] = {
            "counterfactuals": config.counterfactuals,
            "edits": len(accepted),
            "accepted": int(accepted.sum()),
            "acceptance": ACCEPTANCE,
            "judges": JUDGES_FOLDER,
        }
        accelerator.print(f"self-training: the judges accept {accepted.sum()} of {len(accepted)} edits")

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
    consistency = None
    if "consistency" in config.deconfound:
        consistency = ConsistencyObjective(judges, schema, conditions, images, generator.scheduler, config.consistency)
        record["consistency"] = {**asdict(config.consistency), "judges": {"folder": JUDGES_FOLDER, **judges_record}}

    # Model, optimizer, data loader and schedule, prepared by accelerate; EMA of the prepared weights.
    model = Denoiser(generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    lr_scheduler = get_scheduler(  # a prepared scheduler takes num_processes steps per optimizer step
        LR_SCHEDULES[config.lr_schedule],
        optimizer,
        num_warmup_steps=config.warmup_steps * accelerator.num_processes,
        num_training_steps=config.steps * accelerator.num_processes,
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
    progress = TrainingProgress(processes=accelerator.num_processes)
    accelerator.register_for_checkpointing(ema, progress)
    set_seed(config.seed, device_specific=True)  # different noise on each process
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        check_schedule_resumable(config, progress, accelerator.num_processes, out)
        progress.processes = accelerator.num_processes
        ema.to(accelerator.device)
        accelerator.print(f"resumed from {resume_from} at step {progress.step}")
        start_output(accelerator, out, config)  # the checkpoint accepts the resume
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
                    with ema_weights(ema, accelerator.unwrap_model(model)), accelerator.autocast():
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
            "prediction_type": config.prediction_type,
            "snr_gamma": config.snr_gamma,
            "timestep_bias": {"multiplier": config.timestep_bias_multiplier, "portion": config.timestep_bias_portion},
            "steps": progress.step,
            "resumed_from_step": resumed_from_step,
            "init_from": config.init_from,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "num_processes": accelerator.num_processes,
            "effective_batch_size": config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes,
            "learning_rate": config.learning_rate,
            "lr_schedule": config.lr_schedule,
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
    edits: Edits | None = None  # --counterfactuals, before the judges accept any


def load_training_data(config: TrainingConfig, progress: bool = False) -> TrainingData:
    full = open_dataset(config.data, config.data_format)
    schema = full.schema(config.label, config.attributes, config.kinds)
    split = config.split or full.training_split
    table = full.split(split)
    check_informative(schema, schema.encode(table.columns), f"the {split} rows of {config.data}")
    image_format = check_images(table, config.resize)
    edits = None
    if config.counterfactuals:
        edits = load_edits(
            config.counterfactuals, config.data, full, full.split_rows(split), image_format, config.resize
        )
        schema.encode(edits.table.columns)  # every value in the data's vocabularies
    images = load_images(table.image_paths, image_format, progress)
    return TrainingData(table, split, schema, image_format, images, edits)


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


def _log(
    accelerator: Accelerator, window: dict[str, torch.Tensor], batches: int, lr: float, step: int
) -> dict[str, float]:
    """Average the window's losses over its batches and over processes, then log them."""
    names = sorted(window)
    values = torch.stack([window[name] for name in names]) / batches
    averaged = dict(zip(names, accelerator.reduce(values, reduction="mean").tolist(), strict=True))
    accelerator.log({**averaged, "lr": lr}, step=step)
    return averaged
