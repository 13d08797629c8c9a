"""Use a trained classifier: predict the labels of images, and score it on any dataset.

A classifier folder (``cfgen train-classifier --out CLF``) holds one model per seed; both functions
take the folder (its first seed), one seed's folder, or a model already loaded with
``load_classifier``. Scores are those of training: accuracy, per-group and worst-group accuracy,
where a group is a label value crossed with the spurious attributes' values.

    from cfgen.classifier import evaluate_classifier, predict
    predict("runs/clf", pil_images).labels                     # ["3", "7", ...]
    evaluate_classifier("runs/clf", "data/waterbirds", splits=["test"])["splits"]["test"]
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from cfgen.classifier.config import DEFAULT_MIN_GROUP_SIZE
from cfgen.classifier.data import Groups, resolve_groups, to_model_input
from cfgen.classifier.evaluation import split_metrics
from cfgen.classifier.training import EVAL_BATCH_SIZE, Classifier, load_classifier
from cfgen.data.adapters import open_dataset
from cfgen.data.images import ImageFormat, check_images, load_images
from cfgen.data.schema import Attribute
from cfgen.errors import CfgenError

ClassifierInput = str | Path | tuple[Classifier, dict[str, Any]]


@dataclass
class Predictions:
    """``labels[i]`` is the predicted class of image i; ``probabilities[i, k]`` that of ``classes[k]``."""

    labels: list[str]
    probabilities: np.ndarray
    classes: list[str]


def predict(
    classifier: ClassifierInput,
    images: Sequence[PIL.Image.Image] | np.ndarray,
    batch_size: int = EVAL_BATCH_SIZE,
) -> Predictions:
    """Class probabilities and predicted labels of PIL images or a uint8 (N, H, W, C) array, which must
    have the classifier's size and mode (the checkpoint's ``image_size`` and ``image_mode``)."""
    model, config = _loaded(classifier)
    expected = ImageFormat(tuple(config["image_size"]), config["image_mode"])
    if not isinstance(images, np.ndarray):
        expected.check(images, "this classifier")
        images = np.stack([np.asarray(image, dtype=np.uint8).reshape(*image.size[::-1], -1) for image in images])
    width, height = expected.size
    if images.dtype != np.uint8 or images.shape[1:] != (height, width, expected.channels):
        raise CfgenError(
            f"images of shape {images.shape[1:]} and type {images.dtype} do not match this classifier's "
            f"uint8 ({height}, {width}, {expected.channels})"
        )
    device = next(model.parameters()).device
    probabilities = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = to_model_input(torch.from_numpy(images[start : start + batch_size]), device)
            probabilities.append(model(batch)[1].float().softmax(dim=1).cpu().numpy())
    probabilities = np.concatenate(probabilities) if probabilities else np.zeros((0, len(config["label"]["values"])))
    classes = list(config["label"]["values"])
    return Predictions([classes[k] for k in probabilities.argmax(axis=1)], probabilities, classes)


def evaluate_classifier(
    classifier: ClassifierInput,
    data: str | Path,
    splits: Sequence[str] | None = None,
    spurious: Sequence[str] | None = None,
    data_format: str = "auto",
    resize: int | None = None,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
) -> dict[str, Any]:
    """Accuracy, per-group and worst-group accuracy of a classifier on each of ``splits`` of a dataset
    (default: every split, or all rows when it has none); groups cross the label with ``spurious``
    (default: the attributes the classifier was trained with as spurious)."""
    model, config = _loaded(classifier)
    table = open_dataset(data, data_format)
    label_name = config["label"]["name"]
    if label_name not in table.columns:
        raise CfgenError(f"{data} has no column {label_name!r}, the label this classifier predicts")
    label = Attribute(label_name, "categorical", tuple(config["label"]["values"]))
    if spurious is None:
        trained_with = [a["name"] for a in config["spurious"]]
        spurious = [name for name in trained_with if name in table.columns]
    groups = Groups(label, resolve_groups(table, label_name, tuple(spurious)).spurious if spurious else ())
    names = list(splits or table.splits or ["all"])
    for name in names:
        table.split(name)  # an unknown split is refused, listing the valid ones
    image_format = check_images(table, resize)
    expected = ImageFormat(tuple(config["image_size"]), config["image_mode"])
    if image_format != expected:
        (w, h), (ew, eh) = image_format.size, expected.size
        raise CfgenError(
            f"{data} holds {w}x{h} {image_format.mode} images; this classifier reads {ew}x{eh} {expected.mode} "
            f"(pass --resize {ew} when it is square RGB)"
        )
    results = {}
    for name in names:
        part = table.split(name)
        codes = {variable.name: variable.encode(part.column(variable.name)) for variable in (label, *groups.spurious)}
        found = predict((model, config), load_images(part.image_paths, image_format))
        predicted = np.array([label.values.index(value) for value in found.labels], dtype=np.int64)
        results[name] = split_metrics(predicted, codes[label_name], groups.ids(codes), groups.names(), min_group_size)
    return {
        "classifier": config,
        "data": str(data),
        "spurious": [a.name for a in groups.spurious],
        "min_group_size": min_group_size,
        "splits": results,
    }


def _loaded(classifier: ClassifierInput) -> tuple[Classifier, dict[str, Any]]:
    return classifier if isinstance(classifier, tuple) else load_classifier(classifier)
