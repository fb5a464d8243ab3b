"""Training configuration: typed dataclasses <-> YAML files <-> `--key value` options.

OmegaConf structured configs merge the layers (defaults < YAML < options) and check every type; chosen over tyro
and jsonargparse because it leaves the argparse front below, and so every flag spelling, as it was.
Every leaf option has one dotted key (`optim.lr`, `data.path`, `batch_size`); the command line offers each as
`--optim.lr` (dashes or underscores), a YAML file gives the same keys nested, and unknown keys are errors. Model
architecture fields (`ModelConfig`) go under `model.` too, e.g. `--model.schedule ppf3`, and are stored in
`model.overrides`. Every function here also takes other RunConfig subclasses (e.g. FluxTrainConfig).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from ..data.registry import DataConfig
from ..flow.time_sampling import DENSITIES, MODES
from ..io import write_text_atomic
from ..models.backbone import ModelConfig
from ..models.config_checks import model_field_problem
from ..sampling import METHODS
from .run_config import ConfigError, EmaSection, OptimSection, RunConfig, _opt, validate  # noqa: F401 (ppflow.train)


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
                                            "on all t, Lumina-Video ablation)", choices=MODES)
    shares: str | list[float] | None = field(default=None, metadata={
        "help": "batch share per stage: span (default) | density | weights such as 0.6,0.4"})
    density: str = _opt("uniform", "time density inside the stratification: uniform | logit-normal",
                        choices=DENSITIES)
    logit_mean: float = _opt(0.0, "logit-normal mean")
    logit_std: float = _opt(1.0, "logit-normal standard deviation")
    stage_margin: float = _opt(0.0, "stratified: each stage also trains this far past its interval's ends "
                                    "(0 = the paper's disjoint segments)", min=0, below=1)
    label_dropout: float = _opt(0.1, "probability of replacing a label by the null class (for CFG)", min=0,
                                below=1)


@dataclass
class SampleSection:
    """Periodic sample grids from the EMA model."""

    every: int | None = _opt(None, "steps between PNG grids (default: save_every; 0 = never)", min=0)
    count: int = _opt(16, "images per grid", min=1)
    steps: int = _opt(32, "sampler steps", min=1)
    method: str = _opt("euler", "ODE solver", choices=METHODS)
    cfg_scale: float = _opt(1.0, "classifier-free guidance scale (1 = none)")


@dataclass
class TrainConfig(RunConfig):
    """Everything a training run needs; saved resolved in the run folder and in every checkpoint."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowSection = field(default_factory=FlowSection)
    sample: SampleSection = field(default_factory=SampleSection)
    keep_every: int = _opt(0, "also keep checkpoints/step-N.pt and ema-N/ every this many steps (0 = never)", min=0)
    tf32: bool = _opt(True, "allow TF32 matrix products on CUDA (set when training starts, never at import)")
    compile: bool = _opt(False, "torch.compile each transformer block")

    def checks(self) -> list[tuple[bool, str]]:
        d, scale = self.data, self.sample.cfg_scale
        return [*super().checks(),
                (math.isfinite(scale), f"sample.cfg_scale must be a finite number, got {scale}"),
                (d.image_size is None or d.image_size >= 1, f"data.image_size must be >= 1 pixels, got {d.image_size}"),
                (d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")]


ALIASES = {"model": "model.name", "data": "data.name", "data_path": "data.path", "lr": "optim.lr",
           "init": "model.init"}
# ModelConfig fields as `model.<field>` (stored in model.overrides), typed as they may be given
_MODEL_HINTS = {**typing.get_type_hints(ModelConfig), "input_size": int | list[int], "schedule": Any}
MODEL_FIELDS = set(_MODEL_HINTS) - {"name"}
_ModelFields = dataclasses.make_dataclass("ModelFields", [(k, _MODEL_HINTS[k], MISSING) for k in sorted(MODEL_FIELDS)])


# ------------------------------------------------------------------ plain data -> config (OmegaConf checks types)
def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _number(v) -> float | None:
    try:
        return None if isinstance(v, bool) else float(v)
    except (TypeError, ValueError):
        return None


def _prepare(v: Any, tp: Any) -> Any:
    """`v` as OmegaConf takes it for annotation `tp`: text parsed where YAML 1.1 / OmegaConf would not ('none',
    '0.5,0.5', '1e5' for an integer), and a union's list items made numbers (OmegaConf converts nothing there)."""
    args = typing.get_args(tp) if _is_union(tp) else (tp,)
    if isinstance(v, str) and type(None) in args and v.lower() in ("none", "null"):
        return None
    if isinstance(v, str) and any(a is dict or typing.get_origin(a) is dict for a in args):
        try:  # a mapping given on the command line as YAML, e.g. '{max_sequence_length: 256}'
            return yaml.safe_load(v)
        except yaml.YAMLError:
            return v  # OmegaConf names the key and the expected type
    item = next((typing.get_args(a)[0] for a in args if typing.get_origin(a) is list), None)
    text = v
    if item is not None and isinstance(v, str) and (len(args) == 1 or str in args or "," in v or "[" in v):
        v = yaml.safe_load(v) if v.lstrip().startswith("[") else [x for x in v.split(",") if x.strip()]
    if len(args) > 1 and item in (int, float) and isinstance(v, list):
        numbers = [_number(x) for x in v]
        if None in numbers:
            return text  # for a `str` alternative to take, or OmegaConf to reject naming the key
        return [int(x) if item is int and x.is_integer() else x for x in numbers]
    if int in args and isinstance(v, (str, float)):
        n = _number(v)
        return int(n) if n is not None and n.is_integer() else v
    return v


def _shape(d: Any, cls, prefix: str = "") -> dict:
    """Plain data made ready for OmegaConf: leaves `_prepare`d, empty sections dropped, ModelConfig fields given
    under `model:` moved to `model.overrides`, the derived `model_config` of saved runs dropped."""
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in d.items():
        tp = hints.get(k)
        if dataclasses.is_dataclass(tp):
            if v is not None:
                out[k] = _shape(v, tp, f"{prefix}{k}.")
        else:
            out[k] = v if tp is None else _prepare(v, tp)
    if cls is ModelSection:
        extra = {k: out.pop(k) for k in list(out) if k in MODEL_FIELDS}
        out["overrides"] = {**dict(out.get("overrides") or {}), **extra}
    if cls is TrainConfig:
        out.pop("model_config", None)
    return out


def _merged(cls, base, data: dict, prefix: str = "", to=OmegaConf.to_object):
    """`base` (a config or its class) with `data` merged in, made plain by `to`; OmegaConf errors as ConfigError."""
    try:
        return to(OmegaConf.merge(OmegaConf.structured(base), data))
    except OmegaConfBaseException as e:
        key = prefix + (e.full_key or "")
        if isinstance(e, ConfigKeyError):
            section = e.full_key.rpartition(".")[0]
            known = sorted(f.name for f in dataclasses.fields(_annotation(cls, section)))
            raise ConfigError(f"unknown config key(s) {[key]}; known keys under {prefix + section or 'the top level'}: "
                              f"{known}") from None
        if isinstance(e, ValidationError):
            raise ConfigError(f"{key}: expected {_expected(_annotation(cls, e.full_key))}, got {e.value!r}") from None
        raise ConfigError(f"{key}: {e.msg}") from None


def _annotation(cls, key: str) -> Any:
    tp = cls
    for part in filter(None, key.split(".")):
        name, _, index = part.partition("[")
        tp = typing.get_type_hints(tp)[name]
        tp = typing.get_args(tp)[0] if index else tp
    return tp


def _expected(tp) -> str:
    if _is_union(tp):
        return " or ".join(_expected(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return "a list (A,B or [A, B])"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "none"}
    return names.get(tp, "a mapping" if dataclasses.is_dataclass(tp) or tp is dict else str(tp))


def config_from_dict(d: dict, cls=TrainConfig) -> Any:
    """Build a (nested) config from plain data; unknown keys and wrong types raise ConfigError."""
    return _build(cls, cls, d)


def _build(cls, base, data: dict):
    """`base` (a class or a config) with plain `data` merged in; a TrainConfig's model.overrides typed and checked."""
    cfg = _merged(cls, base, _shape(data, cls))
    if isinstance(cfg, TrainConfig):
        cfg.model.overrides = model_overrides(cfg.model.overrides)
    return cfg


def model_overrides(overrides: dict) -> dict:
    """`overrides` (ModelConfig fields) typed and checked by `ppflow.models.config_checks`."""
    unknown = sorted(set(overrides) - MODEL_FIELDS)
    if unknown:
        raise ConfigError(f"unknown model field(s) {unknown}; ModelConfig fields are {sorted(MODEL_FIELDS)}")
    given = {k: _prepare(v, _MODEL_HINTS[k]) for k, v in overrides.items()}
    typed = _merged(_ModelFields, _ModelFields, given, "model.", lambda c: OmegaConf.to_container(c, resolve=True))
    out = {k: typed[k] for k in overrides}
    for k, v in out.items():
        if k == "schedule":
            out[k] = v if isinstance(v, dict) else str(v)
        elif problem := model_field_problem(k, v):
            raise ConfigError(f"model.{problem}")
    return out


def config_to_dict(cfg) -> dict:
    """Plain dict/list/str/number tree (YAML, JSON and `torch.load(weights_only=True)` safe)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def load_config(path: str | Path, cls=TrainConfig) -> Any:
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
                          "the output of --print-config") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path} holds a YAML {type(data).__name__}, not a mapping of options "
                          "(e.g. 'batch_size: 256'); compare with the output of --print-config")
    try:
        return config_from_dict(data or {}, cls)
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def config_yaml(cfg, extra: dict | None = None) -> str:
    """The config as YAML text, keys in field order (what --print-config prints and config.yaml holds)."""
    return yaml.safe_dump({**config_to_dict(cfg), **(extra or {})}, sort_keys=False)


def save_config(cfg, path: str | Path, extra: dict | None = None) -> Path:
    """Write the resolved config as YAML, atomically (a failed write leaves the old file and no temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, config_yaml(cfg, extra), "run config")


# ------------------------------------------------------------------ dotted keys
def leaf_keys(cls=TrainConfig, prefix: str = "") -> dict[str, tuple[Any, str, Any]]:
    """Every settable dotted key -> (type, help, default), model fields included as `model.<field>`."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(leaf_keys(tp, f"{prefix}{f.name}."))
        elif not (cls is ModelSection and f.name == "overrides"):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[prefix + f.name] = (tp, f.metadata.get("help", ""), default)
    if cls is ModelSection:
        model_hints = typing.get_type_hints(ModelConfig)
        for f in dataclasses.fields(ModelConfig):
            if f.name in MODEL_FIELDS:
                help_text = f"ModelConfig.{f.name} override (default: from the model name and the data)"
                out[f"{prefix}{f.name}"] = (model_hints[f.name], help_text, None)
    return out


def normalize_key(key: str) -> str:
    key = key.lstrip("-").replace("-", "_")
    return ALIASES.get(key, key)


def apply_overrides(cfg, overrides: dict[str, Any]):
    """A new config with dotted-key values set (`{'optim.lr': '3e-4', 'model.schedule': 'ppf3'}`).

    Works for any config dataclass built like TrainConfig (e.g. ppflow.flux.train_config.FluxTrainConfig).
    """
    cls = type(cfg)
    keys = leaf_keys(cls)
    nested: dict = {}
    for raw, value in overrides.items():
        key = normalize_key(raw)
        if key not in keys:
            close = [k for k in keys if k.split(".")[-1] == key.split(".")[-1]]
            hint = f"; did you mean {close}?" if close else "; run 'ppflow train --help' for the list"
            raise ConfigError(f"unknown config key {raw!r}{hint}")
        *parents, leaf = key.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return _build(cls, cfg, nested)


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


def config_from_args(args, cls=TrainConfig):
    """The config an argparse namespace asks for: defaults < --config YAML < --key overrides, validated."""
    cfg = load_config(args.config, cls) if getattr(args, "config", None) else cls()
    cfg = apply_overrides(cfg, cli_overrides(args))
    validate(cfg)
    return cfg


def cli_overrides(args) -> dict[str, Any]:
    """Only the keys given on the command line (used to amend a resumed run's config)."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
