"""cfgen: measure confounding, generate counterfactual images, train debiased classifiers."""

from cfgen._torchvision_compat import patch_torchvision

patch_torchvision()

__version__ = "0.1.0"
