"""Training configuration: nested typed dataclasses, YAML files and `--key value` overrides.

Every leaf option has one dotted key (`optim.lr`, `data.path`, `batch_size`); the CLI offers each as
`--optim.lr` (dashes or underscores), a YAML file gives the same keys nested, and unknown keys are
errors. Model architecture fields (`ModelConfig`) go under `model.` too, e.g. `--model.schedule ppf3`,
and are stored in `model.overrides`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
import yaml

from ..data.registry import DataConfig
from ..models.backbone import ModelConfig


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class ModelSection:
    """Which model to train and where its weights start."""

    name: str = _opt("PPF-tiny-2", "model name, e.g. PPF-B-2, PPF-XL-3, SiT-B/2 (sizes tiny mini S B L XL)")
    init: str | None = _opt(None, "start from these weights: any checkpoint ppflow.load_model reads "
                                  "(e.g. a folder made by 'ppflow adapt'); default: from scratch")
    init_format: str | None = _opt(None, "force the checkpoint format of model.init")
    overrides: dict = field(default_factory=dict, metadata={
        "help": "ModelConfig fields, e.g. {schedule: ppf3, learn_sigma: false}; on the command line give them as "
                "--model.<field> VALUE"})


@dataclass
class FlowSection:
    """Objective: times per sample and label dropout."""

    time_sampling: str = _opt("stratified", "stratified (PPFlow) | iid (stage from t) | all_t (every patch size "
                                            "on all t, Lumina-Video ablation)")
    shares: str | list[float] | None = field(default=None, metadata={
        "help": "batch share per stage: span (default) | density | weights such as 0.6,0.4"})
    density: str = _opt("uniform", "time density inside the stratification: uniform | logit-normal")
    logit_mean: float = _opt(0.0, "logit-normal mean")
    logit_std: float = _opt(1.0, "logit-normal standard deviation")
    stage_margin: float = _opt(0.0, "stratified: each stage also trains this far past its interval's ends "
                                    "(0 = the paper's disjoint segments)")
    label_dropout: float = _opt(0.1, "probability of replacing a label by the null class (for CFG)")


@dataclass
class OptimSection:
    """AdamW and the learning rate."""

    lr: float = _opt(1e-4, "learning rate (DiT/SiT: 1e-4, constant)")
    weight_decay: float = _opt(0.0, "AdamW weight decay (DiT/SiT: 0)")
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "AdamW betas"})
    eps: float = _opt(1e-8, "AdamW epsilon")
    grad_clip: float | None = _opt(1.0, "clip the global gradient norm to this value (none = no clipping)")
    warmup_steps: int = _opt(0, "linear learning-rate warm-up over this many steps (0 = none)")
    fused: bool | None = _opt(None, "AdamW's fused kernel: true | false | none = auto (fused when every parameter is "
                                    "a plain CPU/CUDA tensor, e.g. not FSDP-sharded; 3-4x faster update on CPU)")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant."""
        w = self.warmup_steps
        return self.lr * (min(1.0, (step + 1) / w) if w else 1.0)

    def adamw(self, params) -> torch.optim.AdamW:
        """The AdamW these settings describe (`fused` resolved for `params`)."""
        params = list(params)
        return torch.optim.AdamW(params, lr=self.lr, betas=tuple(self.betas), eps=self.eps,
                                 weight_decay=self.weight_decay, fused=use_fused_adamw(params, self.fused))


def use_fused_adamw(params, fused: bool | None = None) -> bool | None:
    """`fused`, or for None whether torch's fused AdamW takes `params` (plain float CPU/CUDA tensors, no DTensor)."""
    if fused is not None:
        return fused
    params = [p["params"] if isinstance(p, dict) else [p] for p in params]
    flat = [p for group in params for p in group]
    ok = all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point()
             for p in flat)
    return True if ok and flat else None


@dataclass
class EmaSection:
    """Exponential moving average of the weights (what sampling uses)."""

    decay: float = _opt(0.9999, "EMA decay per step (DiT/SiT: 0.9999; short runs want less, e.g. 0.999)")
    warmup: bool = _opt(False, "use min(decay, (1 + step) / (10 + step)) so a short run's EMA does not keep "
                               "the random init (DiT/SiT: off)")


@dataclass
class SampleSection:
    """Periodic sample grids from the EMA model."""

    every: int | None = _opt(None, "steps between PNG grids (default: save_every; 0 = never)")
    count: int = _opt(16, "images per grid")
    steps: int = _opt(32, "sampler steps")
    method: str = _opt("euler", "ODE solver")
    cfg_scale: float = _opt(1.0, "classifier-free guidance scale (1 = none)")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved resolved in the run folder and in every checkpoint."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowSection = field(default_factory=FlowSection)
    optim: OptimSection = field(default_factory=OptimSection)
    ema: EmaSection = field(default_factory=EmaSection)
    sample: SampleSection = field(default_factory=SampleSection)
    out: str | None = _opt(None, "run folder (default: runs/<model>-<data>-<time>)")
    seed: int = _opt(0, "seed of initialization, data order and noise (per-rank streams are derived from it)")
    batch_size: int = _opt(256, "global batch size (all processes and accumulation steps together)")
    grad_accum: int = _opt(1, "micro-batches per optimizer step on each process")
    max_steps: int = _opt(400_000, "stop after this many optimizer steps")
    log_every: int = _opt(10, "steps between metrics.csv / TensorBoard rows")
    save_every: int = _opt(5_000, "steps between checkpoints (checkpoints/last.pt and ema/)")
    keep_every: int = _opt(0, "also keep checkpoints/step-N.pt and ema-N/ every this many steps (0 = never)")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    precision: str = _opt("auto", "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16")
    threads: int | None = _opt(None, "CPU threads for torch (default: torch's choice; 1 is often fastest for "
                                     "tiny models on a busy machine)")
    tf32: bool = _opt(True, "allow TF32 matrix products on CUDA (set when training starts, never at import)")
    compile: bool = _opt(False, "torch.compile each transformer block")
    grad_checkpointing: bool = _opt(False, "recompute block activations in the backward pass (saves memory)")
    parallel: str = _opt("auto", "auto (DDP under torchrun) | none | ddp | fsdp (FSDP2 fully_shard per block)")
    tensorboard: bool = _opt(True, "write TensorBoard scalars to RUN_DIR/tb (needs tensorboard)")
    progress: bool = _opt(True, "show a tqdm progress bar")


SECTIONS = ("model", "data", "flow", "optim", "ema", "sample")
ALIASES = {"model": "model.name", "data": "data.name", "data_path": "data.path", "lr": "optim.lr",
           "init": "model.init"}
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"name"}


class ConfigError(ValueError):
    """A configuration key or value is invalid."""


# ------------------------------------------------------------------ type coercion
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp`; strings (from the command line) are parsed."""
    if tp is Any:
        return value
    if _is_union(tp):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        # non-string types first so '0.5,0.5' becomes a list while 'span' stays a string
        for a in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    origin = typing.get_origin(tp)
    if origin is list:
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [coerce(v, item, key) for v in value]
    if tp is dict or origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping such as '{{a: 1}}', got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
            value = int(f) if f.is_integer() else value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported option type {tp}")  # pragma: no cover - developer error


def _type_name(tp) -> str:
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {type(None): "none"}.get(tp, getattr(tp, "__name__", str(tp)))


# ------------------------------------------------------------------ dict <-> config
def config_from_dict(d: dict, cls=TrainConfig, prefix: str = "") -> Any:
    """Build a (nested) config from plain data; unknown keys and wrong types raise ConfigError."""
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {d!r}")
    hints = _hints(cls)
    d = dict(d)
    if cls is ModelSection:  # architecture fields given directly under `model:` go to overrides
        extra = {k: d.pop(k) for k in list(d) if k in MODEL_FIELDS}
        d["overrides"] = {**dict(d.get("overrides") or {}), **extra}
    if cls is TrainConfig:
        d.pop("model_config", None)  # derived, saved for readers; rebuilt from the rest
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; known keys under "
                          f"{prefix.rstrip('.') or 'the top level'}: {sorted(names)}")
    kwargs = {}
    for k, v in d.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = config_from_dict(v or {}, tp, f"{prefix}{k}.")
        else:
            kwargs[k] = coerce(v, tp, prefix + k)
    obj = cls(**kwargs)
    if cls is ModelSection:
        check_model_overrides(obj.overrides)
    return obj


def check_model_overrides(overrides: dict) -> None:
    unknown = sorted(set(overrides) - MODEL_FIELDS)
    if unknown:
        raise ConfigError(f"unknown model field(s) {unknown}; ModelConfig fields are {sorted(MODEL_FIELDS)}")
    hints = _hints(ModelConfig)
    for k, v in overrides.items():
        if k == "input_size" and isinstance(v, str) and "," in v:
            v = v.split(",")
        if k == "input_size" and isinstance(v, (list, tuple)):
            overrides[k] = [coerce(x, int, f"model.{k}") for x in v]
        elif k == "input_size":
            overrides[k] = coerce(v, int, f"model.{k}")
        elif k == "schedule":
            overrides[k] = str(v) if not isinstance(v, dict) else v
        else:
            overrides[k] = coerce(v, hints[k], f"model.{k}")
        from ..convert.native import model_field_problem

        problem = model_field_problem(k, overrides[k])
        if problem and k != "schedule":
            raise ConfigError(f"model.{problem}")


def config_to_dict(cfg) -> dict:
    """Plain dict/list/str/number tree (YAML, JSON and `torch.load(weights_only=True)` safe)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config file (the same nested keys as `config.yaml` in a run folder)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path} ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML ({where}{what}); fix it, or compare with "
                          "'ppflow train --print-config'") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path} holds a YAML {type(data).__name__}, not a mapping of options "
                          "(e.g. 'batch_size: 256'); compare with 'ppflow train --print-config'")
    try:
        return config_from_dict(data or {})
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def save_config(cfg: TrainConfig, path: str | Path, extra: dict | None = None) -> Path:
    """Write the resolved config as YAML, atomically (a failed write leaves the old file and no temporary file)."""
    from ..convert.native import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, yaml.safe_dump({**config_to_dict(cfg), **(extra or {})}, sort_keys=False),
                             "run config")


# ------------------------------------------------------------------ dotted keys
def leaf_keys(cls=TrainConfig, prefix: str = "") -> dict[str, tuple[Any, str, Any]]:
    """Every settable dotted key -> (type, help, default), model fields included as `model.<field>`."""
    out = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(leaf_keys(tp, f"{prefix}{f.name}."))
        elif not (cls is ModelSection and f.name == "overrides"):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[prefix + f.name] = (tp, f.metadata.get("help", ""), default)
    if cls is ModelSection:
        mh = _hints(ModelConfig)
        for f in dataclasses.fields(ModelConfig):
            if f.name in MODEL_FIELDS:
                help_text = f"ModelConfig.{f.name} override (default: from the model name and the data)"
                out[f"{prefix}{f.name}"] = (mh[f.name], help_text, None)
    return out


def normalize_key(key: str) -> str:
    key = key.lstrip("-").replace("-", "_")
    return ALIASES.get(key, key)


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A new config with dotted-key values set (`{'optim.lr': '3e-4', 'model.schedule': 'ppf3'}`).

    Works for any config dataclass built like TrainConfig (e.g. ppflow.flux.train_config.FluxTrainConfig).
    """
    cls = type(cfg)
    d = config_to_dict(cfg)
    keys = leaf_keys(cls)
    for raw, value in overrides.items():
        key = normalize_key(raw)
        if key not in keys:
            close = [k for k in keys if k.split(".")[-1] == key.split(".")[-1]]
            hint = f"; did you mean {close}?" if close else "; run 'ppflow train --help' for the list"
            raise ConfigError(f"unknown config key {raw!r}{hint}")
        parts = key.split(".")
        if cls is TrainConfig and parts[0] == "model" and parts[1] in MODEL_FIELDS:
            d["model"]["overrides"][parts[1]] = value
            continue
        node = d
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return config_from_dict(d, cls)


def validate(cfg: TrainConfig) -> None:
    """Value checks that types alone can't express; each error names the option and a fix."""
    from ..flow.time_sampling import DENSITIES, MODES

    checks = [
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.grad_accum >= 1, f"grad_accum must be >= 1, got {cfg.grad_accum}"),
        (cfg.max_steps >= 0, f"max_steps must be >= 0, got {cfg.max_steps}"),
        (cfg.log_every >= 1, f"log_every must be >= 1, got {cfg.log_every}"),
        (cfg.save_every >= 1, f"save_every must be >= 1, got {cfg.save_every}"),
        (cfg.keep_every >= 0, f"keep_every must be >= 0, got {cfg.keep_every}"),
        (cfg.flow.time_sampling in MODES, f"flow.time_sampling {cfg.flow.time_sampling!r} is not one of {MODES}"),
        (0.0 <= cfg.flow.stage_margin < 1.0, f"flow.stage_margin must be in [0, 1), got {cfg.flow.stage_margin}"),
        (cfg.flow.density in DENSITIES, f"flow.density {cfg.flow.density!r} is not one of {DENSITIES}"),
        (0.0 <= cfg.flow.label_dropout < 1.0, f"flow.label_dropout must be in [0, 1), got {cfg.flow.label_dropout}"),
        (cfg.optim.lr > 0, f"optim.lr must be positive, got {cfg.optim.lr}"),
        (len(cfg.optim.betas) == 2, f"optim.betas needs two values, got {cfg.optim.betas}"),
        (cfg.optim.grad_clip is None or cfg.optim.grad_clip > 0,
         f"optim.grad_clip must be positive or none, got {cfg.optim.grad_clip}"),
        (cfg.optim.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {cfg.optim.warmup_steps}"),
        (0.0 <= cfg.ema.decay < 1.0, f"ema.decay must be in [0, 1), got {cfg.ema.decay}"),
        (cfg.precision in ("auto", "fp32", "bf16"), f"precision {cfg.precision!r} is not one of auto, fp32, bf16"),
        (cfg.parallel in ("auto", "none", "ddp", "fsdp"),
         f"parallel {cfg.parallel!r} is not one of auto, none, ddp, fsdp"),
        (cfg.threads is None or cfg.threads >= 1, f"threads must be >= 1, got {cfg.threads}"),
        (cfg.sample.every is None or cfg.sample.every >= 0, f"sample.every must be >= 0, got {cfg.sample.every}"),
        (cfg.sample.count >= 1 and cfg.sample.steps >= 1, "sample.count and sample.steps must be >= 1"),
        (math.isfinite(cfg.sample.cfg_scale), f"sample.cfg_scale must be a finite number, got {cfg.sample.cfg_scale}"),
        (cfg.data.image_size is None or cfg.data.image_size >= 1,
         f"data.image_size must be >= 1 pixels, got {cfg.data.image_size}"),
        (cfg.data.num_workers >= 0, f"data.num_workers must be >= 0, got {cfg.data.num_workers}"),
        (all(math.isfinite(v) for v in (cfg.optim.lr, cfg.optim.eps, cfg.optim.weight_decay, cfg.ema.decay)),
         "optim.lr, optim.eps, optim.weight_decay and ema.decay must be finite numbers"),
    ]
    try:
        from ..sampling import METHODS

        checks.append((cfg.sample.method in METHODS, f"sample.method {cfg.sample.method!r} is not one of {METHODS}"))
    except ImportError:  # pragma: no cover - sampling is part of the package
        pass
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    from .parallel import resolve_device

    try:
        resolve_device(cfg.device)
    except ValueError as e:
        raise ConfigError(str(e).replace("--device", "device", 1)) from None


# ------------------------------------------------------------------ command line
def add_config_arguments(parser, cls=TrainConfig) -> None:
    """One `--dotted.key` option per leaf of `cls` (dashes or underscores), plus short aliases."""
    import argparse

    parser.add_argument("--config", default=None, metavar="YAML", help="YAML config file (nested keys as below)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    alias_of = {v: k for k, v in ALIASES.items()}
    groups = {}
    for key, (tp, help_text, default) in leaf_keys(cls).items():
        section = key.split(".")[0] if "." in key else "run"
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} options")
        names = {"--" + key.replace("_", "-"), "--" + key}
        if key in alias_of:
            names |= {"--" + alias_of[key].replace("_", "-"), "--" + alias_of[key]}
        shown = "" if default in (None, "") else f" (default: {default})"
        flag = {"nargs": "?", "const": "true"} if tp is bool else {}  # `--compile` alone means true
        groups[section].add_argument(*sorted(names, key=lambda n: (n.count("."), len(n), "_" in n)),
                                     dest=f"cfg:{key}", default=argparse.SUPPRESS, metavar=_metavar(tp),
                                     help=(help_text + shown).replace("%", "%%"), **flag)


def _metavar(tp) -> str:
    if _is_union(tp):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) in (list, tuple):
        return "A,B,..."
    return {int: "N", float: "X", bool: "BOOL", dict: "YAML"}.get(tp, "TEXT")


def config_from_args(args) -> TrainConfig:
    """The config an argparse namespace asks for: defaults < --config YAML < --key overrides."""
    cfg = load_config(args.config) if getattr(args, "config", None) else TrainConfig()
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def cli_overrides(args) -> dict[str, Any]:
    """Only the keys given on the command line (used to amend a resumed run's config)."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
