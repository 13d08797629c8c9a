"""Judges: attribute classifiers that read a dataset's discrete variables off images without the
shortcut the confounding offers. One model family and one training function serve consistency
training (``cfgen.generator``) and evaluation (``cfgen.counterfactuals``), kept in one cache format."""

from cfgen.judges.model import AttributeJudges
from cfgen.judges.reading import (
    DEFAULT_JUDGE_BATCH_SIZE,
    DEFAULT_JUDGE_IMAGES,
    DEFAULT_JUDGE_STEPS,
    Judges,
    default_judge_cache,
    load_or_train_judges,
)
from cfgen.judges.training import JUDGES_VERSION, load_or_train, train_judges

__all__ = [
    "DEFAULT_JUDGE_BATCH_SIZE",
    "DEFAULT_JUDGE_IMAGES",
    "DEFAULT_JUDGE_STEPS",
    "JUDGES_VERSION",
    "AttributeJudges",
    "Judges",
    "default_judge_cache",
    "load_or_train",
    "load_or_train_judges",
    "train_judges",
]
