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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from cfgen.data.cells import cell_index, editable_columns, label_groups, pair_counts
from cfgen.data.schema import Schema
from cfgen.data.tensors import to_model_range
from cfgen.errors import CfgenError
from cfgen.generator.model import predicted_clean
from cfgen.judges import AttributeJudges

DECONFOUND_CHOICES = ("none", "reweight", "consistency")
CONSISTENCY_TERMS = ("effectiveness", "preservation", "cycle", "contrastive")
JUDGES_FOLDER = "judges"
CONTRASTIVE_NEGATIVES = 4
CONTRASTIVE_TEMPERATURE = 0.1

# model(noisy images, timesteps, conditions, keep) -> the prediction (noise or velocity)
PredictionModel = Callable[..., torch.Tensor]


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
    prediction under the edited conditions gives its predicted clean image, which is judged.
    """

    def __init__(
        self,
        judges: AttributeJudges,
        schema: Schema,
        conditions: torch.Tensor,
        images: np.ndarray,
        scheduler: DDPMScheduler,
        settings: ConsistencySettings,
    ):
        self.judges = judges
        self.schema = schema
        self.settings = settings
        self.images = images  # uint8 (N, H, W, C): the pool of real positives and hard negatives
        self.alphas_cumprod = scheduler.alphas_cumprod.float()
        self.prediction_type = scheduler.config.prediction_type
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

    def __call__(
        self, model: PredictionModel, images: torch.Tensor, conditions: torch.Tensor
    ) -> dict[str, torch.Tensor]:
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
        predicted = predicted_clean(model(noisy, timesteps, edited).float(), noisy, alpha, self.prediction_type)

        terms: dict[str, torch.Tensor] = {}
        judged = any(weights[term] > 0 for term in ("effectiveness", "preservation", "contrastive"))
        if judged:
            features, logits = self.judges(predicted)
            terms.update(self._classification(logits, heads, targets.to(source.device), codes.to(source.device)))
        if weights["cycle"] > 0:
            renoised = signal * predicted + spread * noise
            restored = predicted_clean(
                model(renoised, timesteps, factual).float(), renoised, alpha, self.prediction_type
            )
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
