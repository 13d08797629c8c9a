"""One training loop for every method, seeds, model selection, checkpoints and metrics.json.

The loop follows accelerate's example scripts: prepare the model, optimizer and data loader, then
read top to bottom (forward under autocast, ``accelerator.backward``, step), with evaluation
gathered from every process. It runs unchanged on one CPU, one GPU, or under ``accelerate launch``
with several processes; only the main process writes outputs or shows progress.

Output folder::

    CLF/metrics.json                 figures per split, mean/std over seeds, per-seed details
    CLF/run.json                     resolved configuration, command, versions
    CLF/seed-<s>/model.safetensors   the selected epoch's weights
    CLF/seed-<s>/config.json         what ``load_classifier`` needs to rebuild the model
    CLF/logs/                        tensorboard: per-epoch losses and validation scores of every seed
                                     (when tensorboard is installed)
"""

import copy
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm.auto import tqdm

from cfgen.backbones import build_backbone, from_torchvision_keys, to_torchvision_keys
from cfgen.classifier.config import ClassifierConfig
from cfgen.classifier.data import (
    VALIDATION,
    ImageSet,
    TrainingData,
    load_oracle_data,
    load_training_data,
)
from cfgen.classifier.evaluation import SELECTION_RULE, select_epoch, selection_metric, split_metrics, summarize_splits
from cfgen.classifier.methods import ERM, Objective, build_objective
from cfgen.errors import CfgenError
from cfgen.io import (
    atomic_output_dir,
    check_output_dir,
    finish_trackers,
    scalar_record,
    write_json,
    write_run_record,
)
from cfgen.runtime import make_accelerator, resolve_report_to, stop_if_diverged

METRICS_FILE = "metrics.json"
METRICS_SCHEMA = "cfgen.classifier.metrics/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINT_FORMAT = "cfgen-classifier/1"
EVAL_BATCH_SIZE = 256
MIN_BATCH = 2  # small training sets get batches this small rather than none (the batch never exceeds the rows)


class Classifier(nn.Module):
    """A backbone and a linear head; ``forward`` returns (features, logits) so that objectives can
    regularise the representation through the same (possibly distributed) call."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        return features, self.head(features)


def check_inputs(config: ClassifierConfig, objective: Objective) -> None:
    """Refuse, before anything is loaded, a method run without what it needs."""
    if objective.uses_counterfactuals and not config.counterfactuals:
        raise CfgenError(
            f"{config.method} needs counterfactuals: pass --counterfactuals CF (a folder from `cfgen generate` "
            "over this dataset's train split)"
        )
    if objective.needs_groups and not config.spurious:
        raise CfgenError(f"{config.method} needs group labels: name the spurious attribute(s) with --spurious A[,B]")


def load_data(config: ClassifierConfig) -> TrainingData:
    """The data ``config`` trains on: the oracle's unconfounded rows, or the dataset (with
    counterfactuals when the method uses them)."""
    progress = config.progress and PartialState().is_local_main_process
    if config.method == "oracle":
        return load_oracle_data(
            config.data,
            config.label,
            config.spurious,
            config.oracle_data,
            config.data_format,
            config.resize,
            progress,
            config.kinds,
        )
    uses = build_objective(config).uses_counterfactuals
    return load_training_data(
        config.data,
        config.label,
        config.spurious,
        config.counterfactuals if uses else (),
        config.data_format,
        config.resize,
        progress=progress,
        kinds=config.kinds,
    )


def train_classifiers(config: ClassifierConfig, data: TrainingData | None = None) -> dict[str, Any]:
    """Train ``config.method`` once per seed, keep each seed's selected epoch, evaluate every
    non-train split, write the classifier folder and return its metrics (the metrics.json payload).

    ``data`` (from ``load_data``) lets several runs share images already in memory.
    """
    objective = build_objective(config)
    check_inputs(config, objective)
    out = Path(config.out)
    check_output_dir(out, config.overwrite)
    accelerator = make_accelerator(
        config.mixed_precision,
        log_with=resolve_report_to(config.report_to),
        project_config=ProjectConfiguration(logging_dir=str(out / "logs")),  # staged below, like every output
    )
    if config.counterfactuals and not objective.uses_counterfactuals:
        accelerator.print(f"note: {config.method} uses no counterfactuals; --counterfactuals is ignored")
    if data is None:
        data = load_data(config)
    if objective.uses_counterfactuals and not data.has_counterfactuals:
        raise CfgenError(f"{config.method} needs counterfactuals, and the data given holds none")
    if data.n_train < MIN_BATCH * accelerator.num_processes:
        raise CfgenError(
            f"{data.n_train} training images are fewer than a batch of {MIN_BATCH} per process "
            f"({accelerator.num_processes} processes); a classifier needs more training rows"
        )
    main = accelerator.is_main_process
    staging_context = atomic_output_dir(out, config.overwrite) if main else nullcontext(None)
    with staging_context as staging:
        if staging is not None:
            accelerator.project_configuration.logging_dir = str(staging / "logs")
        accelerator.init_trackers(config.method, config=scalar_record(config.to_dict()))
        per_seed = []
        for seed in config.seeds:
            started = time.perf_counter()
            model, result = train_seed(config, data, accelerator, seed)
            result["train_seconds"] = round(time.perf_counter() - started, 2)
            per_seed.append(result)
            if staging is not None:
                save_checkpoint(staging / f"seed-{seed}", model, _checkpoint_config(config, data, result))
            accelerator.free_memory()  # drop the accelerator's references to this seed's model and loaders
        metrics = build_metrics(config, data, objective, per_seed, accelerator)
        if staging is not None:
            write_json(staging / METRICS_FILE, metrics)
            write_run_record(staging, config.to_dict(), config.seeds[0], accelerator.mixed_precision)
        finish_trackers(accelerator)
    accelerator.wait_for_everyone()
    return metrics


def train_seed(
    config: ClassifierConfig, data: TrainingData, accelerator: Accelerator, seed: int
) -> tuple[Classifier, dict[str, Any]]:
    """One seed: (an ERM stage when the method has one,) training with per-epoch selection, then
    evaluation of the kept epoch on every evaluation split."""
    set_seed(seed)
    objective = build_objective(config)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + accelerator.process_index)
    if objective.erm_epochs:
        erm = ERM()
        erm.setup(data, accelerator, generator)
        erm_model, _, _ = fit(
            erm, new_model(config, data), data, config, accelerator, objective.erm_epochs, f"seed-{seed}/erm"
        )
        objective.use_erm_predictions(torch.from_numpy(predict(accelerator, erm_model, data.train)))
        set_seed(seed)
    objective.setup(data, accelerator, generator)
    model, history, best_state = fit(
        objective, new_model(config, data), data, config, accelerator, config.epochs, f"seed-{seed}/train"
    )
    accelerator.unwrap_model(model).load_state_dict(best_state)
    splits = {
        name: split_metrics(
            predict(accelerator, model, images),
            images.labels.numpy(),
            images.groups.numpy(),
            data.groups.names(),
            config.min_group_size,
        )
        for name, images in data.evaluation.items()
    }
    selected = select_epoch(history)
    result = {"seed": seed, "selected_epoch": history[selected]["epoch"], "history": history, "splits": splits}
    return accelerator.unwrap_model(model), result


def paired_sampler(paired: torch.Tensor | None, share: float | None) -> WeightedRandomSampler | None:
    """Draws training rows so that ``share`` of them have a counterfactual, when only some do.

    With counterfactuals for a few hundred of thousands of images (the quick pipeline's budget),
    uniform batches hold one or two pairs and the pairing term barely acts. The generator is seeded
    from the global RNG, which ``set_seed`` makes the same on every process, so all processes
    draw the same rows and accelerate shards them.
    """
    if share is None or paired is None or bool(paired.all()) or not bool(paired.any()):
        return None
    counts = int(paired.sum()), int((~paired).sum())
    weights = torch.where(paired, share / counts[0], (1 - share) / counts[1]).double()
    generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    return WeightedRandomSampler(weights, num_samples=len(paired), replacement=True, generator=generator)


def new_model(config: ClassifierConfig, data: TrainingData) -> Classifier:
    backbone = build_backbone(config.backbone, data.image_format.channels, config.backbone_weights)
    return Classifier(backbone, data.groups.label.num_values)


def fit(
    objective: Objective,
    model: Classifier,
    data: TrainingData,
    config: ClassifierConfig,
    accelerator: Accelerator,
    epochs: int,
    stage: str = "train",
) -> tuple[nn.Module, list[dict[str, Any]], dict[str, torch.Tensor]]:
    """The training loop: returns the prepared model, one history entry per epoch and the weights
    of the epoch the selection rule keeps (scored on the validation split after every epoch).
    Each epoch's averages are logged to the trackers under ``stage``.

    AdamW with the learning rate decayed to 0 along a cosine over all steps: short CPU runs
    converge markedly better than at a constant rate.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batch_size = min(config.batch_size, max(MIN_BATCH, data.n_train // accelerator.num_processes))
    sampler = paired_sampler(objective.paired_rows(), config.pair_share)
    if config.pair_share is not None and sampler is None:
        accelerator.print(
            f"note: --pair-share changes nothing for {config.method} here: it pairs no counterfactuals, "
            "or every training image has one"
        )
    loader = DataLoader(
        range(data.n_train), batch_size=batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    validation = data.evaluation.get(VALIDATION)
    show = config.progress and accelerator.is_local_main_process
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] = {}
    for epoch in range(1, epochs + 1):
        model.train()
        totals: dict[str, float] = {}
        steps = 0
        description = f"{config.method} {stage} epoch {epoch}/{epochs}"
        with tqdm(loader, desc=description, disable=not show, leave=False) as batches:  # closed before an error
            for rows in batches:
                batch = data.pool.batch(rows, accelerator.device)
                with accelerator.autocast():
                    loss, logs = objective.loss(model, batch)
                accelerator.backward(loss)
                gradient_norm = accelerator.clip_grad_norm_(model.parameters(), math.inf)  # measured, not clipped
                step = (epoch - 1) * len(loader) + steps + 1
                stop_if_diverged(accelerator, gradient_norm, step, scheduler.get_last_lr()[0])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                for key, value in {"loss": loss.item(), **logs}.items():
                    totals[key] = totals.get(key, 0.0) + value
                steps += 1
        entry: dict[str, Any] = {"epoch": epoch, **{key: value / max(steps, 1) for key, value in totals.items()}}
        if validation is not None:
            scores = split_metrics(
                predict(accelerator, model, validation),
                validation.labels.numpy(),
                validation.groups.numpy(),
                data.groups.names(),
                config.min_group_size,
            )
            entry["validation"] = {k: scores[k] for k in ("accuracy", "worst_group_accuracy", "worst_group")}
        history.append(entry)
        scalars = {k: v for k, v in entry.items() if k != "epoch" and isinstance(v, float)}
        scalars |= {f"validation_{k}": v for k, v in entry.get("validation", {}).items() if isinstance(v, float)}
        accelerator.log({f"{stage}/{key}": value for key, value in scalars.items()}, step=epoch)
        if select_epoch(history) == len(history) - 1:
            state = accelerator.unwrap_model(model).state_dict()
            best_state = {key: value.detach().cpu().clone() for key, value in state.items()}
    return model, history, best_state


@torch.no_grad()
def predict(accelerator: Accelerator, model: nn.Module, images: ImageSet) -> np.ndarray:
    """Predicted label codes for every image, computed in shards across processes and gathered."""
    loader = accelerator.prepare_data_loader(DataLoader(range(len(images)), batch_size=EVAL_BATCH_SIZE))
    was_training = model.training
    model.eval()
    predictions = np.empty(len(images), dtype=np.int64)
    for rows in loader:
        batch = images.batch(rows, accelerator.device)
        with accelerator.autocast():
            _, logits = model(batch.images)
        found, where = accelerator.gather_for_metrics((logits.argmax(dim=1), rows.to(accelerator.device)))
        predictions[where.cpu().numpy()] = found.cpu().numpy()
    model.train(was_training)
    return predictions


def build_metrics(
    config: ClassifierConfig,
    data: TrainingData,
    objective: Objective,
    per_seed: list[dict[str, Any]],
    accelerator: Accelerator,
) -> dict[str, Any]:
    """The metrics.json payload (schema in docs/classifier.md)."""
    first_validation = per_seed[0]["history"][0].get("validation")
    return {
        "schema": METRICS_SCHEMA,
        "method": config.method,
        "label": data.groups.label.name,
        "classes": list(data.groups.label.values),
        "spurious": [a.name for a in data.groups.spurious],
        "seeds": list(config.seeds),
        "min_group_size": config.min_group_size,
        "selection": {
            "rule": SELECTION_RULE,
            "split": VALIDATION if first_validation is not None else None,
            "metric": selection_metric(first_validation),
        },
        "splits": summarize_splits([run["splits"] for run in per_seed]),
        "per_seed": per_seed,
        "data": {
            "dataset": data.source,
            "train_source": data.train_source,
            "train_rows": data.n_train,
            "image_size": list(data.image_format.size),
            "image_mode": data.image_format.mode,
            "counterfactuals": data.counterfactuals.to_dict() if objective.uses_counterfactuals else None,
        },
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "config": config.to_dict(),
    }


def _checkpoint_config(config: ClassifierConfig, data: TrainingData, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "backbone": config.backbone,
        "in_channels": data.image_format.channels,
        "image_size": list(data.image_format.size),
        "image_mode": data.image_format.mode,
        "input_range": "uint8 / 127.5 - 1, channels first",
        "label": {"name": data.groups.label.name, "values": list(data.groups.label.values)},
        "spurious": [{"name": a.name, "values": list(a.values)} for a in data.groups.spurious],
        "method": config.method,
        "seed": result["seed"],
        "selected_epoch": result["selected_epoch"],
    }


def save_checkpoint(folder: Path, model: nn.Module, checkpoint_config: dict[str, Any]) -> None:
    """Weights as safetensors (a ResNet's under torchvision's names) and, beside them, the json needed to
    rebuild the model."""
    folder.mkdir(parents=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    state = to_torchvision_keys(checkpoint_config["backbone"], state)
    save_file(state, folder / WEIGHTS_FILE, metadata={"format": CHECKPOINT_FORMAT})
    write_json(folder / CONFIG_FILE, checkpoint_config)


def load_classifier(folder: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """A saved classifier in eval mode and its config; ``folder`` is ``CLF/seed-<s>`` or ``CLF``
    (then the first seed's)."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        seeds = sorted(folder.glob(f"seed-*/{CONFIG_FILE}"))
        if not seeds:
            raise CfgenError(f"{folder} holds no classifier ({CONFIG_FILE} and {WEIGHTS_FILE}, or seed-*/ folders)")
        folder = seeds[0].parent
    checkpoint_config = json.loads((folder / CONFIG_FILE).read_text())
    if checkpoint_config.get("format") != CHECKPOINT_FORMAT:
        raise CfgenError(f"{folder / CONFIG_FILE} is not a {CHECKPOINT_FORMAT} checkpoint")
    backbone = build_backbone(checkpoint_config["backbone"], checkpoint_config["in_channels"])
    model = Classifier(backbone, len(checkpoint_config["label"]["values"]))
    model.load_state_dict(from_torchvision_keys(checkpoint_config["backbone"], load_file(folder / WEIGHTS_FILE)))
    return model.eval(), copy.deepcopy(checkpoint_config)
