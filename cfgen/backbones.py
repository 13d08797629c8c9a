"""Feature extractors: a small CNN for 28-32 px images, torchvision ResNets for larger ones.

Every backbone maps (B, C, H, W) images in [-1, 1] to (B, feature_dim) features; heads and
regularizers work on those features. ResNet weights come from a local file when given, never
from a hub. A classifier with a ResNet backbone is saved under torchvision's key names (its head
as ``fc``), so ``torchvision.models.resnet18(num_classes=K).load_state_dict`` reads it as it is.
"""

from pathlib import Path

import torch
import torchvision
from torch import nn

from cfgen.errors import CfgenError

BACKBONES = ("small-cnn", "resnet18", "resnet50")


class SmallCNN(nn.Module):
    """Three conv blocks and global pooling: enough for colored digits, fast on a CPU. ``convolutions``
    per block: a second one reads a digit's shape more precisely (the evaluation judges use two)."""

    def __init__(self, in_channels: int = 3, width: int = 32, convolutions: int = 1):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for i in range(convolutions):
                conv = nn.Conv2d(cout if i else cin, cout, 3, padding=1)
                layers += [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers, nn.MaxPool2d(2))

        self.layers = nn.Sequential(block(in_channels, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.feature_dim = 4 * width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images).mean(dim=(2, 3))


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without its classification layer."""

    def __init__(self, name: str, in_channels: int, weights: str | Path | None = None):
        super().__init__()
        network = getattr(torchvision.models, name)(weights=None)
        if weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise CfgenError(f"backbone weights {path} not found; give a local .pth or .safetensors file")
            state = _read_state_dict(path)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            network.load_state_dict(state, strict=False)
        if in_channels != 3:
            network.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim = network.fc.in_features
        network.fc = nn.Identity()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)


def build_backbone(name: str, in_channels: int, weights: str | Path | None = None) -> nn.Module:
    """A backbone with a ``feature_dim`` attribute."""
    if name == "small-cnn":
        if weights is not None:
            raise CfgenError("--backbone-weights applies to ResNets; small-cnn trains from scratch")
        return SmallCNN(in_channels)
    if name in ("resnet18", "resnet50"):
        return ResNetFeatures(name, in_channels, weights)
    raise CfgenError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def to_torchvision_keys(backbone: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A classifier's state (``backbone.network.*``, ``head.*``) under a torchvision ResNet's names; other
    backbones keep cfgen's."""
    if not backbone.startswith("resnet"):
        return state
    renamed = {}
    for key, value in state.items():
        if key.startswith("head."):
            renamed["fc." + key.removeprefix("head.")] = value
        else:
            renamed[key.removeprefix("backbone.network.")] = value
    return renamed


def from_torchvision_keys(backbone: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``to_torchvision_keys``; a state already under cfgen's names (older checkpoints)
    passes through."""
    if not backbone.startswith("resnet") or any(key.startswith("backbone.") for key in state):
        return state
    return {
        ("head." + key.removeprefix("fc.")) if key.startswith("fc.") else "backbone.network." + key: value
        for key, value in state.items()
    }
