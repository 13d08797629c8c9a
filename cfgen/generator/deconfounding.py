"""Training under confounding: the ``--deconfound`` choices (combinable, e.g. ``reweight,consistency``).

- ``none``: plain conditional training, the baseline.
- ``reweight``: sample each training image with weight w = prod_v p(v) / p(joint), the product of the
  marginals of the label and the discrete attributes over their empirical joint, clipped at
  ``--reweight-clip``. Reweighted batches look as if the variables were independent (as far as the
  non-empty cells allow); the effective sample size (sum w)^2 / sum w^2 says what it costs.
- ``consistency``: frozen attribute classifiers ("judges"), trained once on the same images with
  group-balanced sampling and in a product with what the other variables say, score the model's
  predicted clean image of edited training examples: the edit must carry the target value
  (effectiveness), keep the label and the other attributes (preservation), be undone by editing
  back (cycle), and land near real images of the target group and away from the shortcut group in
  the judges' feature space (contrastive). See docs/generator.md.

Discrete variables (binary, categorical) are the ones reweighted, judged and edited; continuous
attributes only condition the model.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from cfgen.classifier.backbones import build_backbone
from cfgen.data.images import to_model_range
from cfgen.data.schema import Schema
from cfgen.errors import CfgenError

DECONFOUND_CHOICES = ("none", "reweight", "consistency")
CONSISTENCY_TERMS = ("effectiveness", "preservation", "cycle", "contrastive")
JUDGES_FOLDER = "judges"
JUDGES_WEIGHTS = "model.safetensors"
JUDGES_CONFIG = "config.json"
# Bump when the judges' training changes: cached judges are retrained, and the version is in their record.
JUDGES_VERSION = 3
# Degradations applied to half of each judge batch, so that judges read the soft predicted-clean
# images of mid-range timesteps as well as sharp ones: a Gaussian blur of up to 1/16 of the image
# side (1.75 px at 28 px) and Gaussian noise of up to 0.2 (images live in [-1, 1]).
BLUR_SIGMA_FRACTION = 1 / 16
NOISE_STD = 0.2
CONTRASTIVE_NEGATIVES = 4
CONTRASTIVE_TEMPERATURE = 0.1

# model(noisy images, timesteps, conditions, keep) -> predicted noise
NoiseModel = Callable[..., torch.Tensor]


def parse_deconfound(choices: str | Sequence[str]) -> tuple[str, ...]:
    """``"reweight,consistency"`` -> ("reweight", "consistency"), checked, in canonical order."""
    names = [part.strip() for part in choices.split(",")] if isinstance(choices, str) else list(choices)
    names = [name for name in names if name]
    unknown = [name for name in names if name not in DECONFOUND_CHOICES]
    if unknown or not names:
        given = unknown[0] if unknown else ""
        raise CfgenError(f"unknown --deconfound choice {given!r}; valid: {', '.join(DECONFOUND_CHOICES)} (combinable)")
    if "none" in names and len(set(names)) > 1:
        raise CfgenError("--deconfound none cannot be combined with reweight or consistency")
    return tuple(name for name in DECONFOUND_CHOICES if name in names)


def discrete_columns(schema: Schema) -> list[int]:
    """Positions (in ``schema.names``) of the discrete variables: the ones reweighted and judged."""
    return [i for i, variable in enumerate(schema.variables) if variable.is_discrete]


def editable_columns(schema: Schema) -> list[int]:
    """Positions of the discrete attributes (the label is never edited): what consistency training edits."""
    return [i for i in discrete_columns(schema) if i > 0]


def label_groups(schema: Schema, codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's label code and the number of labels, from (N, V) codes of every variable; one group
    for a continuous label, so that "rare given the label" becomes "rare overall"."""
    if schema.label.is_discrete:
        return codes[:, 0], schema.label.num_values
    return np.zeros(len(codes), dtype=np.int64), 1


def cell_index(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's cell (its combination of discrete codes) and the number of rows in each cell."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def reweight_weights(codes: np.ndarray, clip: float) -> np.ndarray:
    """w_i = prod_v p(v_i) / p(cell_i) over the (N, V) discrete codes, clipped at ``clip``."""
    if clip < 1:
        raise CfgenError(f"--reweight-clip must be at least 1, not {clip}")
    rows = len(codes)
    product = np.ones(rows)
    for column in codes.T:
        product *= np.bincount(column)[column] / rows
    inverse, counts = cell_index(codes)
    return np.minimum(product / (counts[inverse] / rows), clip)


def effective_sample_size(weights: np.ndarray) -> float:
    """(sum w)^2 / sum w^2: how many unweighted examples the weighted sample is worth."""
    return float(weights.sum() ** 2 / np.square(weights).sum())


def confounding_log_priors(codes: np.ndarray, num_values: Sequence[int]) -> list[torch.Tensor]:
    """For each variable j, every row's log p(v_j | the other variables) as far as the data's pair counts tell.

    Naive Bayes over add-one smoothed counts, p(v_j) prod_k p(v_k | v_j), normalised over v_j: a
    (N, K_j) tensor per variable. It is what the confounding alone says about v_j, the expert a
    judge head is trained in a product with (``train_judges``).
    """
    priors = []
    for j, count in enumerate(num_values):
        log_prior = np.tile(np.log(np.bincount(codes[:, j], minlength=count) + 1.0), (len(codes), 1))  # (N, K_j)
        for k, other in enumerate(num_values):
            if k != j:
                table = pair_counts(codes[:, j], codes[:, k], count, other) + 1.0
                log_prior += np.log(table / table.sum(1, keepdims=True))[:, codes[:, k]].T
        priors.append(torch.log_softmax(torch.from_numpy(log_prior).float(), dim=1))
    return priors


def group_balanced_weights(codes: np.ndarray) -> np.ndarray:
    """Weights that make every non-empty cell (label and attribute values) equally likely: 1 / (cells * n_cell)."""
    inverse, counts = cell_index(codes)
    return 1.0 / (len(counts) * counts[inverse])


def pair_counts(groups: np.ndarray, values: np.ndarray, num_groups: int, num_values: int) -> np.ndarray:
    """(num_groups, num_values) table of how often each (label group, attribute value) pair occurs."""
    return np.bincount(groups * num_values + values, minlength=num_groups * num_values).reshape(num_groups, num_values)


class AttributeJudges(nn.Module):
    """A small-CNN trunk with one classification head per discrete variable (the label first)."""

    def __init__(self, in_channels: int, names: Sequence[str], num_values: Sequence[int]):
        super().__init__()
        self.in_channels = in_channels
        self.names = list(names)
        self.num_values = list(num_values)
        self.trunk = build_backbone("small-cnn", in_channels)
        self.heads = nn.ModuleList(nn.Linear(self.trunk.feature_dim, count) for count in self.num_values)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Features (B, D) and one (B, K_v) logit tensor per judged variable."""
        features = self.trunk(images)
        return features, [head(features) for head in self.heads]

    def save(self, folder: Path, record: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / JUDGES_WEIGHTS)
        config = {"in_channels": self.in_channels, "names": self.names, "num_values": self.num_values, **record}
        (folder / JUDGES_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> tuple["AttributeJudges", dict]:
        """The judges and the record they were saved with."""
        config = json.loads((folder / JUDGES_CONFIG).read_text())
        judges = cls(config.pop("in_channels"), config.pop("names"), config.pop("num_values"))
        judges.load_state_dict(load_file(folder / JUDGES_WEIGHTS))
        return judges.eval(), config


def shift(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Move each image by up to 1/14 of its size in each direction, its edge pixels filling the gap."""
    count, _, height, width = images.shape
    reach = max(1, height // 14)
    offsets = torch.randint(-reach, reach + 1, (2, count, 1), generator=generator).to(images.device)
    padded = F.pad(images, (reach, reach, reach, reach), mode="replicate")
    rows = (torch.arange(height, device=images.device) + reach + offsets[0])[:, None, :, None]  # (N, 1, H, 1)
    columns = (torch.arange(width, device=images.device) + reach + offsets[1])[:, None, None, :]  # (N, 1, 1, W)
    index = torch.arange(count, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[index, channel, rows, columns]


def degrade(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur and add noise to a random half of the images, each with its own strength."""
    count, channels, height, _ = images.shape
    rand = torch.rand(3, count, generator=generator).to(images.device)
    sigma = (rand[0] * BLUR_SIGMA_FRACTION * height).clamp_min(1e-3)
    radius = max(1, int(np.ceil(2 * BLUR_SIGMA_FRACTION * height)))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (count * channels, taps)
    flat = images.reshape(1, count * channels, *images.shape[2:])
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=len(kernel))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=len(kernel))
    noise = torch.randn(images.shape, generator=generator).to(images.device) * NOISE_STD * rand[1, :, None, None, None]
    degraded = flat.reshape(images.shape) + noise
    chosen = (rand[2] < 0.5)[:, None, None, None]
    return torch.where(chosen, degraded, images)


def train_judges(
    images: np.ndarray,
    codes: np.ndarray,
    names: Sequence[str],
    num_values: Sequence[int],
    steps: int,
    batch_size: int,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[AttributeJudges, dict]:
    """Train judges on uint8 (N, H, W, C) images and (N, V) discrete codes so that each head reads its own variable.

    Two defences against the confounding. Group-balanced sampling: every non-empty cell of the
    label and attribute values is drawn equally often. Product of experts: each head's logits are
    trained added to ``confounding_log_priors``, what the other variables already say about its
    variable, so that the shortcut earns a head nothing; the head is used alone. Balancing leaves
    a confounded variable predictive wherever cells are empty (at digit-colour association 0.99,
    colour still gives the digit in 74% of balanced draws); the product takes the reward away.
    Every image is shifted by a few pixels (``shift``) and half of each batch is blurred and noised
    (``degrade``); the learning rate decays to zero along a cosine.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    weights = group_balanced_weights(codes)
    judges = AttributeJudges(images.shape[-1], names, num_values).to(device)
    optimizer = torch.optim.AdamW(judges.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    targets = torch.from_numpy(codes).to(device)
    priors = [prior.to(device) for prior in confounding_log_priors(codes, num_values)]
    sampling = torch.from_numpy(weights)
    judges.train()
    losses = []
    for _ in tqdm(range(steps), desc="training judges", disable=not progress):
        rows = torch.multinomial(sampling, batch_size, replacement=True, generator=generator)
        batch = degrade(shift(to_model_range(images[rows.numpy()]).to(device), generator), generator)
        _, logits = judges(batch)
        on_device = rows.to(device)
        loss = torch.stack(
            [F.cross_entropy(head + priors[j][on_device], targets[on_device, j]) for j, head in enumerate(logits)]
        ).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    record = {
        "version": JUDGES_VERSION,
        "backbone": "small-cnn",
        "sampling": "group-balanced (every non-empty cell of label and attribute values equally likely)",
        "product_of_experts": "log p(variable | other variables), naive Bayes over add-one smoothed pair counts",
        "cells": len(cell_index(codes)[1]),
        "effective_sample_size": effective_sample_size(weights),
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "schedule": "cosine decay to 0",
        "augmentation": "shifts of up to 1/14 of the size; blur and noise on half of each batch",
        "seed": seed,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
    }
    return judges.eval().requires_grad_(False), record


@dataclass(frozen=True)
class ConsistencySettings:
    """How much of each batch is edited, at which timesteps, and the weight of each term."""

    edit_fraction: float = 0.25
    min_timestep: int = 100
    max_timestep: int = 600
    effectiveness_weight: float = 0.1
    preservation_weight: float = 0.1
    cycle_weight: float = 1.0
    contrastive_weight: float = 0.05

    def weights(self) -> dict[str, float]:
        return {term: getattr(self, f"{term}_weight") for term in CONSISTENCY_TERMS}

    def check(self, schema: Schema, num_train_timesteps: int) -> None:
        """Refuse settings (or a schema) that consistency training cannot work with."""
        if not editable_columns(schema):
            raise CfgenError("--deconfound consistency needs at least one discrete attribute to edit")
        if not 0 < self.edit_fraction <= 1:
            raise CfgenError(f"--edit-fraction must be in (0, 1], not {self.edit_fraction}")
        if not 0 <= self.min_timestep < self.max_timestep <= num_train_timesteps:
            raise CfgenError(
                f"consistency timesteps must satisfy 0 <= min < max <= {num_train_timesteps}, "
                f"not [{self.min_timestep}, {self.max_timestep})"
            )
        negative = [term for term, weight in self.weights().items() if weight < 0]
        if negative:
            raise CfgenError(f"--{negative[0]}-weight must be >= 0")


class ConsistencyObjective:
    """Counterfactual-consistency terms for a batch, judged by frozen ``AttributeJudges``.

    The first ``edit_fraction`` of the batch is edited: one discrete attribute per example gets a new
    value drawn with probability proportional to 1 / (1 + n(label, value)), so rare and unseen
    combinations dominate. Each edited image is noised to a timestep in [min, max) and the model's
    noise prediction under the edited conditions gives its predicted clean image, which is judged.
    """

    def __init__(
        self,
        judges: AttributeJudges,
        schema: Schema,
        conditions: torch.Tensor,
        images: np.ndarray,
        alphas_cumprod: torch.Tensor,
        settings: ConsistencySettings,
    ):
        self.judges = judges
        self.schema = schema
        self.settings = settings
        self.images = images  # uint8 (N, H, W, C): the pool of real positives and hard negatives
        self.alphas_cumprod = alphas_cumprod.float()
        self.columns = [schema.names.index(name) for name in judges.names]
        # (head, column, number of values) of every attribute that can be edited
        self.editable = [
            (judges.names.index(schema.names[column]), column, schema.variables[column].num_values)
            for column in editable_columns(schema)
        ]
        codes = conditions.long().numpy()
        groups, self.num_groups = label_groups(schema, codes)
        self.rarity: dict[int, torch.Tensor] = {}
        self.positives: dict[tuple[int, int, int], np.ndarray] = {}
        self.negatives: dict[tuple[int, int, int], np.ndarray] = {}
        for _, column, count in self.editable:
            values = codes[:, column]
            self.rarity[column] = torch.from_numpy(1.0 / (1.0 + pair_counts(groups, values, self.num_groups, count)))
            for group in range(self.num_groups):
                for value in range(count):
                    self.positives[column, group, value] = np.flatnonzero((groups == group) & (values == value))
                    self.negatives[column, group, value] = np.flatnonzero((groups != group) & (values == value))

    def __call__(self, model: NoiseModel, images: torch.Tensor, conditions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted terms (only those with a positive weight) for a batch in [-1, 1] and its conditions."""
        settings, weights = self.settings, self.settings.weights()
        count = max(1, round(settings.edit_fraction * len(images)))
        source, factual = images[:count].float(), conditions[:count]
        codes = factual.long().cpu()
        groups = torch.from_numpy(label_groups(self.schema, codes.numpy())[0])
        choice = torch.randint(len(self.editable), (count,))
        heads, columns, targets = torch.empty_like(choice), torch.empty_like(choice), torch.empty_like(choice)
        for k, (head, column, _) in enumerate(self.editable):
            rows = (choice == k).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            odds = self.rarity[column][groups[rows]].clone()
            odds[torch.arange(len(rows)), codes[rows, column]] = 0  # a new value, never the factual one
            heads[rows], columns[rows] = head, column
            targets[rows] = torch.multinomial(odds, 1).squeeze(1)
        edited = factual.clone()
        edited[torch.arange(count), columns.to(edited.device)] = targets.to(edited.dtype).to(edited.device)

        timesteps = torch.randint(settings.min_timestep, settings.max_timestep, (count,))
        alpha = self.alphas_cumprod[timesteps].to(source.device)[:, None, None, None]
        signal, spread = alpha.sqrt(), (1 - alpha).sqrt()
        noise = torch.randn_like(source)
        timesteps = timesteps.to(source.device)
        noisy = signal * source + spread * noise
        predicted = (noisy - spread * model(noisy, timesteps, edited).float()) / signal

        terms: dict[str, torch.Tensor] = {}
        judged = any(weights[term] > 0 for term in ("effectiveness", "preservation", "contrastive"))
        if judged:
            features, logits = self.judges(predicted)
            terms.update(self._classification(logits, heads, targets.to(source.device), codes.to(source.device)))
        if weights["cycle"] > 0:
            renoised = signal * predicted + spread * noise
            restored = (renoised - spread * model(renoised, timesteps, factual).float()) / signal
            terms["cycle"] = F.mse_loss(restored, source)
        if weights["contrastive"] > 0:
            terms["contrastive"] = self._contrastive(features, groups, columns, targets)
        return {term: value for term, value in terms.items() if weights[term] > 0}

    def _classification(
        self, logits: list[torch.Tensor], heads: torch.Tensor, targets: torch.Tensor, codes: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Effectiveness: the edited head reads the target. Preservation: every other head reads the factual value."""
        heads = heads.to(targets.device)
        hit, kept = [], []
        for j, head_logits in enumerate(logits):
            expected = torch.where(heads == j, targets, codes[:, self.columns[j]])
            losses = F.cross_entropy(head_logits.float(), expected, reduction="none")
            hit.append(losses[heads == j])
            kept.append(losses[heads != j])
        return {"effectiveness": torch.cat(hit).mean(), "preservation": torch.cat(kept).mean()}

    def _contrastive(
        self, features: torch.Tensor, groups: torch.Tensor, columns: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """InfoNCE: a real image of the target (label, value) group is the positive; real images with the
        target value but another label (the shortcut a confounded generator takes) are the hard negatives.
        Edits whose target group has no real image are left out of this term."""
        rows, pool = [], []
        for i, key in enumerate(zip(columns.tolist(), groups.tolist(), targets.tolist(), strict=True)):
            positives, negatives = self.positives[key], self.negatives[key]
            if len(positives) == 0 or len(negatives) == 0:
                continue
            rows.append(i)
            pool.append(positives[torch.randint(len(positives), (1,)).numpy()])
            pool.append(negatives[torch.randint(len(negatives), (CONTRASTIVE_NEGATIVES,)).numpy()])
        if not rows:
            return features.sum() * 0.0
        with torch.no_grad():
            bank = to_model_range(self.images[np.concatenate(pool)]).to(features.device)
            real = F.normalize(self.judges(bank)[0].float(), dim=1).reshape(len(rows), 1 + CONTRASTIVE_NEGATIVES, -1)
        anchors = F.normalize(features[rows].float(), dim=1)
        similarity = torch.einsum("rd,rkd->rk", anchors, real) / CONTRASTIVE_TEMPERATURE
        return F.cross_entropy(similarity, torch.zeros(len(rows), dtype=torch.long, device=similarity.device))
