"""Training objectives: each method is the loss of one batch; the loop in training.py is shared.

A model maps images to ``(features, logits)``. An objective may draw partner images for the rows
of a batch from the training pool (counterfactuals, images of another label, ...) and forwards
them together with the batch in ONE call, which keeps batch-norm statistics consistent and lets
DistributedDataParallel see every parameter once per step.

The counterfactual methods all train on the partners they draw, each with its own label (the
cross-entropy of cf-augment), and differ in the term they add, so a comparison isolates that term:

    erm                   cross-entropy
    cf-augment            cross-entropy on the batch plus one counterfactual per image (any label)
    cf-reg                + weight * distance(rep(x), rep(x_cf)), x_cf a counterfactual of the SAME label
    gradient-supervision  + weight * (1 - cos(grad_h log p(y'|h(x)), h(x') - h(x))), Teney et al. 2020;
                          x' of another label y': its own label-changing counterfactual, else an image
                          of label y' with x's spurious values, a counterfactual included
    cf-contrastive        + weight * contrastive loss with an image's counterfactual as its positive
    group-dro             Sagawa et al. 2020: exponentiated-gradient weights on label x spurious groups
    cnc                   Zhang et al. 2022: positives/negatives chosen by an ERM model's predictions
    oracle                erm on unconfounded training rows (the data, not the loss, differs)
"""

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from cfgen.classifier.config import ClassifierConfig
from cfgen.classifier.data import Batch, BlockSampler, Relation, TrainingData
from cfgen.errors import CfgenError

Logs = dict[str, float]


class Objective:
    """The loss of a batch; ``setup`` sees the data once, before the first step, and may refuse it."""

    uses_counterfactuals = False
    needs_groups = False
    erm_epochs = 0  # > 0: train plain ERM first and hand its predictions to ``use_erm_predictions``
    relation: Relation | None = None  # the counterfactuals each training row is paired with, if any

    def setup(self, data: TrainingData, accelerator: Accelerator, generator: torch.Generator) -> None:
        self.data = data
        self.accelerator = accelerator
        self.generator = generator

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Logs]:
        raise NotImplementedError

    def partners(self, rows: torch.Tensor, device: torch.device) -> Batch:
        """Pool rows ``rows`` as a batch on ``device``."""
        return self.data.pool.batch(rows, device)

    def paired_rows(self) -> torch.Tensor | None:
        """Mask of the training rows that have a counterfactual this objective pairs (None: it pairs none)."""
        return None if self.relation is None else self.relation.counts() > 0


class ERM(Objective):
    """Average cross-entropy: what a plain classifier minimises, shortcut included."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Logs]:
        _, logits = model(batch.images)
        loss = F.cross_entropy(logits, batch.labels)
        return loss, {"ce": loss.item()}


class CounterfactualAugmentation(Objective):
    """Each image's batch slot is joined by one of its counterfactuals, drawn anew every step."""

    uses_counterfactuals = True

    def setup(self, data: TrainingData, accelerator: Accelerator, generator: torch.Generator) -> None:
        super().setup(data, accelerator, generator)
        self.relation = data.relation(same_label=None)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Logs]:
        partners, has = self.relation.sample(batch.rows, self.generator)
        extra = self.partners(partners[has], batch.images.device)
        _, logits = model(torch.cat([batch.images, extra.images]))
        loss = F.cross_entropy(logits, torch.cat([batch.labels, extra.labels]))
        return loss, {"ce": loss.item()}


def pair_distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """Per-pair squared Euclidean distance ("l2") or 1 - cosine similarity ("cosine")."""
    if distance == "l2":
        return (a - b).pow(2).sum(dim=1)
    return 1 - F.cosine_similarity(a, b, dim=1)


class SameLabelPairs(Objective):
    """Objectives that pair each image with one of its counterfactuals that kept its label."""

    uses_counterfactuals = True
    method = ""  # the method name, for the refusal below

    def setup(self, data: TrainingData, accelerator: Accelerator, generator: torch.Generator) -> None:
        super().setup(data, accelerator, generator)
        self.relation = data.relation(same_label=True)
        if int(self.relation.counts().sum()) == 0:
            raise CfgenError(
                f"{self.method} pairs an image with counterfactuals of the SAME label, and none of the given "
                "counterfactuals keeps its source's label; intervene on non-causal attributes (e.g. fg_color=*)"
            )

    def forward_pairs(
        self, model: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Batch, torch.Tensor]:
        """Features and logits of the batch followed by its drawn partners, the partners, which images
        have one, and the cross-entropy over both (each partner with its own label)."""
        partners, has = self.relation.sample(batch.rows, self.generator)
        extra = self.partners(partners[has], batch.images.device)
        features, logits = model(torch.cat([batch.images, extra.images]))
        ce = F.cross_entropy(logits, torch.cat([batch.labels, extra.labels]))
        return features, logits, has, extra, ce


class CounterfactualRegularizer(SameLabelPairs):
    """Cross-entropy on the batch and one same-label counterfactual per image, plus a pull between
    the two representations: whatever the counterfactual changed (a non-causal attribute) must stop
    mattering to the representation, not only to the decision.

    Counterfactuals whose label differs from their source's are never used: pulling those
    together would erase the very difference that decides the label. (With the cross-entropy on
    the originals alone the penalty fought the shortcut the loss kept teaching: 0.81 instead of
    0.90 unconfounded accuracy on the benchmark's colored digits, see docs/classifier.md.)
    """

    method = "cf-reg"

    def __init__(self, weight: float, distance: str, layer: str):
        self.weight, self.distance, self.layer = weight, distance, layer

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Logs]:
        features, logits, has, extra, ce = self.forward_pairs(model, batch)
        size = len(batch.labels)
        representation = features if self.layer == "features" else logits
        if len(extra.labels):
            anchors = representation[:size][has.to(representation.device)]
            penalty = pair_distance(anchors, representation[size:], self.distance).mean()
        else:
            penalty = ce.new_zeros(())
        return ce + self.weight * penalty, {"ce": ce.item(), "cf_penalty": penalty.item()}


class GroupDRO(Objective):
    """Minimise the weighted group losses while the weights climb toward the worst group.

    The weights are updated from the group losses summed over every process, so all processes
    keep the same weights.
    """

    needs_groups = True

    def __init__(self, step_size: float):
        self.step_size = step_size

    def setup(self, data: TrainingData, accelerator: Accelerator, generator: torch.Generator) -> None:
        super().setup(data, accelerator, generator)
        self.weights = torch.full((data.groups.count,), 1.0 / data.groups.count)

    def robust_loss(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Update the group weights with this batch's group losses and return the weighted loss."""
        count = len(self.weights)
        sums = losses.new_zeros(count).index_add(0, groups, losses)
        sizes = torch.bincount(groups, minlength=count).to(losses.dtype)
        means = sums / sizes.clamp(min=1)
        total_sums = self.accelerator.reduce(sums.detach().float(), reduction="sum")
        total_sizes = self.accelerator.reduce(sizes.float(), reduction="sum")
        total_means = (total_sums / total_sizes.clamp(min=1)).cpu()
        self.weights = self.weights * torch.exp(self.step_size * total_means)
        self.weights = self.weights / self.weights.sum()
        return (self.weights.to(means.device, means.dtype) * means).sum()

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Logs]:
        _, logits = model(batch.images)
        losses = F.cross_entropy(logits, batch.labels, reduction="none")
        robust = self.robust_loss(losses, batch.groups)
        return robust, {"ce": losses.mean().item(), "robust": robust.item()}


class GradientSupervision(Objective):
    """Cross-entropy on the batch and partners plus 1 - cos(grad_h log p(y'|h(x)), h(x') - h(x))
    over pairs of different labels.

    Teney et al. train on the counterfactual examples too, and supervise the direction in which
    the decision changes with the step from an example to its label-changing counterfactual. A
    row's own label-changing counterfactual is used when the folders hold one; edits of non-causal
    attributes never change the label, so otherwise the partner is an image of another label that
    shares the row's spurious attribute values (training rows and counterfactuals alike): the
    closest thing to "same image, other label" the data offers, and a pair in which the spurious
    attribute cannot explain the label change.
    """

    uses_counterfactuals = True

    def __init__(self, weight: float):
        self.weight = weight

    def setup(self, data: TrainingData, accelerator: Accelerator, generator: torch.Generator) -> None:
        super().setup(data, accelerator, generator)
        self.own = data.relation(same_label=False)
        self.matched = None
        if data.groups.spurious:
            self.matched = BlockSampler.build(data.pool.spurious.numpy(), data.pool.labels.numpy())
        elif int(self.own.counts().sum()) == 0:
            raise CfgenError(
                "gradient-supervision needs pairs of different labels: the counterfactuals hold no label-changing "
                "edit, so name the spurious attribute(s) with --spurious to pair images of other labels that share them"
            )

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Logs]:
        partners, has = self.own.sample(batch.rows, self.generator)
        if self.matched is not None:
            pool = self.data.pool
            matched, found = self.matched.sample(pool.spurious[batch.rows], pool.labels[batch.rows], self.generator)
            partners, has = torch.where(has, partners, matched), has | found
        extra = self.partners(partners[has], batch.images.device)
        features, logits = model(torch.cat([batch.images, extra.images]))
        size = len(batch.labels)
        ce = F.cross_entropy(logits, torch.cat([batch.labels, extra.labels]))
        if not len(extra.labels):
            return ce, {"ce": ce.item(), "gs": 0.0}
        mask = has.to(logits.device)
        head = self.accelerator.unwrap_model(model).head.weight
        gradient = log_probability_gradient(logits[:size][mask], extra.labels, head)
        step = features[size:] - features[:size][mask]
        alignment = (1 - F.cosine_similarity(gradient, step.float(), dim=1)).mean()
        return ce + self.weight * alignment, {"ce": ce.item(), "gs": alignment.item()}


def log_probability_gradient(logits: torch.Tensor, labels: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """d log p(label | h) / dh for logits = head @ h + b: head^T (onehot(label) - softmax(logits)).

    Written out rather than asked of autograd: under mixed precision the features a model returns
    are a float32 copy of those its logits were computed from, which autograd cannot differentiate
    through. Differentiable in the logits and the head, as ``create_graph`` would be.
    """
    probabilities = F.softmax(logits.float(), dim=1)
    return (F.one_hot(labels, probabilities.shape[1]).float() - probabilities) @ head.float()


def contrastive_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidate_labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE on unit vectors: each anchor against its positive and the candidates of OTHER labels.

    Candidates of the anchor's own label are left out of the denominator: they are not pushed away.
    """
    anchors, positives, candidates = (F.normalize(t.float(), dim=1) for t in (anchors, positives, candidates))
    positive = (anchors * positives).sum(dim=1, keepdim=True) / temperature
    negative = anchors @ candidates.T / temperature
    negative = negative.masked_fill(anchor_labels[:, None] == candidate_labels[None, :], float("-inf"))
    return (torch.logsumexp(torch.cat([positive, negative], dim=1), dim=1) - positive[:, 0]).mean()


class CorrectNContrast(Objective):
    """After an ERM stage, pull together same-class images the ERM model told apart and push apart
    other-class images it confused: its predictions stand in for the unknown spurious attribute.

    For an anchor of class y that ERM predicted as p: the positive has class y and a prediction
    other than p; the negatives (the batch's sampled negatives of other classes) include one with
    prediction p and another class. When no such image exists, any image of class y (positive) or
    of another class (negative) is drawn instead.
    """

    def __init__(self, weight: float, temperature: float, erm_epochs: int):
        self.weight, self.temperature, self.erm_epochs = weight, temperature, erm_epochs

    def use_erm_predictions(self, predictions: torch.Tensor) -> None:
        self.predictions = predictions.cpu()

    def setup(self, data: TrainingData, accelerator: Accelerator, generator: torch.Generator) -> None:
        super().setup(data, accelerator, generator)
        labels = data.pool.labels[: data.n_train].numpy()
        predictions = self.predictions.numpy()
        self.positives = BlockSampler.build(labels, predictions)
        self.negatives = BlockSampler.build(predictions, labels)
        self.any_same = BlockSampler.build(labels, np.arange(len(labels)))
        self.any_other = BlockSampler.build(np.zeros_like(labels), labels)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Logs]:
        labels, predictions = self.data.pool.labels[batch.rows], self.predictions[batch.rows]
        positives, has_positive = self.positives.sample(labels, predictions, self.generator)
        fallback, found = self.any_same.sample(labels, batch.rows, self.generator)
        positives, has_positive = torch.where(has_positive, positives, fallback), has_positive | found
        negatives, has_negative = self.negatives.sample(predictions, labels, self.generator)
        fallback, found = self.any_other.sample(torch.zeros_like(labels), labels, self.generator)
        negatives, has_negative = torch.where(has_negative, negatives, fallback), has_negative | found
        valid = has_positive & has_negative
        device = batch.images.device
        extra = self.partners(torch.cat([positives[valid], negatives[valid]]), device)
        features, logits = model(torch.cat([batch.images, extra.images]))
        size, pairs = len(batch.labels), int(valid.sum())
        ce = F.cross_entropy(logits[:size], batch.labels)
        if pairs == 0:
            return ce, {"ce": ce.item(), "contrastive": 0.0}
        contrastive = contrastive_loss(
            features[:size][valid.to(device)],
            features[size : size + pairs],
            features[size + pairs :],
            batch.labels[valid.to(device)],
            extra.labels[pairs:],
            self.temperature,
        )
        return ce + self.weight * contrastive, {"ce": ce.item(), "contrastive": contrastive.item()}


class CounterfactualContrastive(SameLabelPairs):
    """Cross-entropy on the batch and its counterfactuals plus a contrastive loss whose positive
    for an image is its same-label counterfactual (and the other way round), negatives the batch's
    images of other labels, in the spirit of CLAD: the representation must match across the edit
    and still separate classes.
    """

    method = "cf-contrastive"

    def __init__(self, weight: float, temperature: float):
        self.weight, self.temperature = weight, temperature

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Logs]:
        features, _, has, extra, ce = self.forward_pairs(model, batch)
        size = len(batch.labels)
        if not len(extra.labels):
            return ce, {"ce": ce.item(), "contrastive": 0.0}
        originals = features[:size][has.to(features.device)]
        counterfactuals = features[size:]
        labels = torch.cat([batch.labels, extra.labels])
        contrastive = contrastive_loss(
            torch.cat([originals, counterfactuals]),
            torch.cat([counterfactuals, originals]),
            features,
            torch.cat([extra.labels, extra.labels]),
            labels,
            self.temperature,
        )
        return ce + self.weight * contrastive, {"ce": ce.item(), "contrastive": contrastive.item()}


def build_objective(config: ClassifierConfig) -> Objective:
    """The objective of ``config.method`` with its flags applied."""
    method = config.method
    if method in ("erm", "oracle"):
        return ERM()
    if method == "cf-augment":
        return CounterfactualAugmentation()
    if method == "cf-reg":
        return CounterfactualRegularizer(config.cf_weight, config.cf_distance, config.cf_layer)
    if method == "group-dro":
        return GroupDRO(config.dro_step_size)
    if method == "gradient-supervision":
        return GradientSupervision(config.gs_weight)
    if method == "cnc":
        return CorrectNContrast(config.contrastive_weight, config.temperature, config.cnc_erm_epochs)
    if method == "cf-contrastive":
        return CounterfactualContrastive(config.contrastive_weight, config.temperature)
    raise CfgenError(f"unknown method {method!r}")
