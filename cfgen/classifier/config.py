"""The resolved settings of a classifier run, checked up front so bad input fails in one line."""

from dataclasses import asdict, dataclass, field
from typing import Any

from cfgen.backbones import BACKBONES
from cfgen.errors import CfgenError
from cfgen.runtime import resolve_mixed_precision, resolve_report_to

METHOD_NAMES = (
    "erm",
    "cf-augment",
    "cf-reg",
    "group-dro",
    "gradient-supervision",
    "cnc",
    "cf-contrastive",
    "oracle",
)
CF_DISTANCES = ("l2", "cosine")
CF_LAYERS = ("features", "logits")
DEFAULT_MIN_GROUP_SIZE = 5  # smaller groups are listed, but do not compete for the worst (docs/classifier.md)


@dataclass
class ClassifierConfig:
    """Everything ``train_classifiers`` needs; field names match the command-line flags."""

    data: str
    method: str
    out: str
    label: str | None = None
    spurious: tuple[str, ...] = ()
    counterfactuals: tuple[str, ...] = ()
    data_format: str = "auto"
    kinds: dict[str, str] = field(default_factory=dict)
    resize: int | None = None
    backbone: str = "small-cnn"
    backbone_weights: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seeds: tuple[int, ...] = (0,)
    mixed_precision: str = "auto"
    report_to: str = "tensorboard"
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE
    pair_share: float | None = None  # None: training rows are drawn uniformly
    cf_weight: float = 10.0  # 1 left the shortcut in with few pairs (docs/classifier.md)
    cf_distance: str = "cosine"
    cf_layer: str = "features"
    dro_step_size: float = 0.01
    gs_weight: float = 1.0
    contrastive_weight: float = 1.0
    temperature: float = 0.1
    cnc_erm_epochs: int = 1
    oracle_data: str | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.spurious = tuple(self.spurious)
        self.counterfactuals = tuple(str(c) for c in self.counterfactuals)
        self.seeds = tuple(self.seeds)
        _one_of(self.method, METHOD_NAMES, "method")
        _one_of(self.backbone, BACKBONES, "backbone")
        _one_of(self.cf_distance, CF_DISTANCES, "--cf-distance")
        _one_of(self.cf_layer, CF_LAYERS, "--cf-layer")
        resolve_mixed_precision(self.mixed_precision)  # refuses unknown choices and fp16 without CUDA
        resolve_report_to(self.report_to)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise CfgenError(f"--seeds needs distinct whole numbers >= 0, e.g. 0,1,2; got {self.seeds}")
        for name in ("epochs", "batch_size", "min_group_size"):
            if getattr(self, name) < 1:
                raise CfgenError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.cnc_erm_epochs < 1:
            raise CfgenError(f"--cnc-erm-epochs must be at least 1, not {self.cnc_erm_epochs}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise CfgenError(f"--{name} must be positive, not {getattr(self, name)}")
        for name in ("weight_decay", "cf_weight", "dro_step_size", "gs_weight", "contrastive_weight"):
            if not getattr(self, name) >= 0:
                raise CfgenError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(self, name)}")
        if self.pair_share is not None and not 0 < self.pair_share < 1:
            raise CfgenError(f"--pair-share must be between 0 and 1 (exclusive), not {self.pair_share}")
        if self.oracle_data is not None and self.method != "oracle":
            raise CfgenError(f"--oracle-data applies to --method oracle, not {self.method}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2), with a one-line error for anything else."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CfgenError(f"--seeds takes comma-separated whole numbers, e.g. 0,1,2; got {text!r}") from None


def _one_of(value: str, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise CfgenError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
