"""Model sizes and paper-style names: `SiT-B/2`, `DiT-XL/2`, `PPF-B-2`, `PPF-XL-3`, `SiT-tiny/2`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .backbone import ModelConfig, PPFlowTransformer


@dataclass(frozen=True)
class Size:
    depth: int
    hidden_size: int
    num_heads: int


SIZES: dict[str, Size] = {
    "tiny": Size(2, 64, 4),  # debug size for tests
    "mini": Size(6, 128, 4),  # CPU experiments: the Fashion-MNIST demo trains two in ~7 minutes
    "S": Size(12, 384, 6),
    "B": Size(12, 768, 12),
    "L": Size(24, 1024, 16),
    "XL": Size(28, 1152, 16),
}

_NAME = re.compile(r"^(?P<family>SiT|DiT|PPF)-(?P<size>[A-Za-z]+)(?:(?P<sep>[-/])(?P<num>\d+))?$")


def parse_name(name: str) -> dict:
    """Config fields for a paper-style name. SiT/DiT-X/p: one stage, patch p; PPF-X-k: k-stage preset."""
    m = _NAME.match(name)
    if not m or m.group("size") not in SIZES:
        raise ValueError(
            f"unknown model name {name!r}: use SiT-<size>/<patch>, DiT-<size>/<patch> or PPF-<size>-<stages> "
            f"with size in {list(SIZES)}, e.g. {', '.join(model_names()[:4])}"
        )
    size = SIZES[m.group("size")]
    fields = {"depth": size.depth, "hidden_size": size.hidden_size, "num_heads": size.num_heads, "name": name}
    num = m.group("num")
    if m.group("family") == "PPF":
        if num is not None:
            if num not in ("1", "2", "3"):
                raise ValueError(f"{name!r}: PPF presets have 2 or 3 stages; pass schedule=... for others")
            fields["schedule"] = {"1": "sit", "2": "ppf2", "3": "ppf3"}[num]
    else:
        p = int(num or 2)
        fields["schedule"] = f"1:{p}x{p}"
    return fields


def model_names() -> list[str]:
    """Names the CLI offers (any size works with each family)."""
    out = []
    for s in SIZES:
        out += [f"SiT-{s}/2", f"DiT-{s}/2", f"PPF-{s}-2", f"PPF-{s}-3"]
    return out


def create_config(name: str, **overrides) -> ModelConfig:
    fields = parse_name(name)
    fields.update(overrides)
    return ModelConfig(**fields)


def create_model(name: str, **overrides) -> PPFlowTransformer:
    """Build a fresh model by name, e.g. `create_model('PPF-B-2', num_classes=10, in_channels=1)`."""
    return PPFlowTransformer(create_config(name, **overrides))
