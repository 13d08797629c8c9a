"""cfgen: measure confounding, generate counterfactual images, train debiased classifiers."""

from cfgen._torchvision_compat import patch_before_import

patch_before_import()

__version__ = "0.1.0"
