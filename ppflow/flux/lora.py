"""LoRA weights of a PPFlux base model: saved with the extras, so a LoRA fine-tune never copies the base."""

from __future__ import annotations

import torch
from torch import nn


def lora_state(base: nn.Module) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """(LoraConfig as a dict, adapter weights) of the base's single PEFT adapter, or (None, {})."""
    configs = getattr(base, "peft_config", None)
    if not configs:
        return None, {}
    if len(configs) > 1:
        raise ValueError(f"the base model has {len(configs)} LoRA adapters ({', '.join(configs)}); "
                         "save_pretrained stores one: delete or merge the others first")
    from peft import get_peft_model_state_dict

    name, config = next(iter(configs.items()))
    weights = get_peft_model_state_dict(base, adapter_name=name)
    d = config.to_dict()
    d = {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}
    return d, {k: v.detach().contiguous().cpu() for k, v in weights.items()}


def load_lora(base: nn.Module, config: dict, weights: dict[str, torch.Tensor]) -> None:
    """Add the saved adapter to the base and load its weights (strictly: every LoRA tensor must be there)."""
    from peft import LoraConfig, set_peft_model_state_dict

    known = set(LoraConfig.__dataclass_fields__)
    base.add_adapter(LoraConfig(**{k: v for k, v in config.items() if k in known}))
    result = set_peft_model_state_dict(base, weights, adapter_name="default")
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing or getattr(result, "unexpected_keys", []):
        raise ValueError(f"LoRA weights do not fit the base: missing {missing[:3]}, unexpected "
                         f"{list(result.unexpected_keys)[:3]}")
