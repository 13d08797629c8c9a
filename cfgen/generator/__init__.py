"""The counterfactual generator: model, training under confounding, and inference."""
