"""Embedding of the label and attributes, with a learned "unknown" state per variable.

Each variable gets its own embedding (a table for discrete ones, a linear map for continuous ones)
plus a learned null vector used when the variable is dropped. The embeddings are summed into one
vector that the UNet adds to its timestep embedding. Dropping variables independently during
training lets inference ask for the prediction with any subset of variables unknown, which
is what per-attribute classifier-free guidance needs.
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cfgen.data.schema import Schema


class AttributeEncoder(ModelMixin, ConfigMixin):
    """Maps (batch, variables) condition values and keep-masks to one conditioning vector."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, names: list[str], num_values: list[int], embedding_dim: int):
        super().__init__()
        self.tables = nn.ModuleList()
        self.projections = nn.ModuleList()
        for count in num_values:
            # discrete: `count` values plus the null row at index `count`; continuous (count 0): a projection
            self.tables.append(nn.Embedding(count + 1, embedding_dim) if count else nn.Identity())
            self.projections.append(nn.Identity() if count else nn.Linear(1, embedding_dim))
        self.null = nn.Parameter(torch.zeros(len(names), embedding_dim))

    @classmethod
    def for_schema(cls, schema: Schema, embedding_dim: int) -> "AttributeEncoder":
        return cls(list(schema.names), [v.num_values for v in schema.variables], embedding_dim)

    def forward(self, conditions: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``conditions``: (B, V) codes or values; ``keep``: (B, V) bool, False = variable unknown."""
        if keep is None:
            keep = torch.ones_like(conditions, dtype=torch.bool)
        total = 0
        for i, count in enumerate(self.config.num_values):
            column = conditions[:, i]
            if count:
                codes = torch.where(keep[:, i], column.long(), torch.full_like(column, count, dtype=torch.long))
                total = total + self.tables[i](codes)
            else:
                embedded = self.projections[i](column[:, None].to(self.null.dtype))
                total = total + torch.where(keep[:, i, None], embedded, self.null[i])
        return total
