"""Classifiers: backbones, debiasing objectives and evaluation."""
