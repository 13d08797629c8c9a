"""The judges' network: a small-CNN trunk with one head per discrete variable, saved as safetensors
beside a config that holds everything it was trained from (the cache key)."""

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cfgen.backbones import SmallCNN

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class AttributeJudges(nn.Module):
    """A small-CNN trunk with one classification head per discrete variable (the label first)."""

    def __init__(self, in_channels: int, names: Sequence[str], num_values: Sequence[int], convolutions: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.names = list(names)
        self.num_values = list(num_values)
        self.convolutions = convolutions
        self.trunk = SmallCNN(in_channels, convolutions=convolutions)
        self.heads = nn.ModuleList(nn.Linear(self.trunk.feature_dim, count) for count in self.num_values)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Features (B, D) and one (B, K_v) logit tensor per judged variable."""
        features = self.trunk(images)
        return features, [head(features) for head in self.heads]

    def save(self, folder: Path, record: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS_FILE)
        config = {
            "in_channels": self.in_channels, "names": self.names, "num_values": self.num_values,
            "convolutions": self.convolutions, **record,
        }  # fmt: skip
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> tuple["AttributeJudges", dict]:
        """The judges and the record they were saved with."""
        config = json.loads((folder / CONFIG_FILE).read_text())
        judges = cls(  # judges saved before the trunk's depth was a choice have one convolution per block
            config.pop("in_channels"), config.pop("names"), config.pop("num_values"), config.pop("convolutions", 1)
        )
        judges.load_state_dict(load_file(folder / WEIGHTS_FILE))
        return judges.eval(), config
