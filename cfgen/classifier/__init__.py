"""Classifiers: debiasing objectives, training, evaluation and prediction."""

from cfgen.classifier.inference import Predictions, evaluate_classifier, predict
from cfgen.classifier.training import load_classifier, train_classifiers

__all__ = ["Predictions", "evaluate_classifier", "load_classifier", "predict", "train_classifiers"]
