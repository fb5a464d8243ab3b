import argparse

import pytest
import torch
import yaml

from ppflow.train import ConfigError, TrainConfig, apply_overrides, config_from_dict, config_to_dict, load_config
from ppflow.train.config import add_config_arguments, config_from_args, validate


def parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return config_from_args(p.parse_args(argv))


def test_cli_aliases_dotted_keys_and_types():
    cfg = parse(["--model", "PPF-tiny-3", "--data", "digits", "--batch-size", "16", "--max-steps", "20",
                 "--optim.lr", "3e-4", "--optim.grad-clip", "none", "--flow.shares", "0.5,0.3,0.2",
                 "--model.schedule", "0.5:4x4,0.75:2x4,1:2x2", "--model.learn_sigma", "false", "--ema.decay", "0.999",
                 "--data-path", "/x", "--flow.time-sampling", "all_t"])
    assert cfg.model.name == "PPF-tiny-3" and cfg.batch_size == 16 and cfg.max_steps == 20
    assert cfg.optim.lr == 3e-4 and cfg.optim.grad_clip is None and cfg.ema.decay == 0.999
    assert cfg.flow.shares == [0.5, 0.3, 0.2] and cfg.flow.time_sampling == "all_t" and cfg.data.path == "/x"
    assert cfg.model.overrides == {"schedule": "0.5:4x4,0.75:2x4,1:2x2", "learn_sigma": False}
    assert parse(["--flow.shares", "density"]).flow.shares == "density"
    assert parse(["--compile"]).compile is True and parse(["--tf32", "false"]).tf32 is False


def test_unknown_keys_and_bad_values_are_errors():
    with pytest.raises(SystemExit):  # argparse rejects unknown flags
        parse(["--optim.learning-rate", "1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.learning_rate'"):
        apply_overrides(TrainConfig(), {"optim.learning_rate": 1})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['optim.lrr'\]"):
        config_from_dict({"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match="unknown model field"):
        config_from_dict({"model": {"overrides": {"depthh": 3}}})
    with pytest.raises(ConfigError, match="batch_size: expected an integer"):
        parse(["--batch-size", "many"])
    with pytest.raises(ConfigError, match="grad_accum must be >= 1"):
        parse(["--grad-accum", "0"])
    with pytest.raises(ConfigError, match="sample.method 'rk99'"):
        parse(["--sample.method", "rk99"])
    with pytest.raises(ConfigError, match="time_sampling 'random'"):
        parse(["--flow.time-sampling", "random"])


def test_yaml_file_then_overrides_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "SiT-tiny/2", "schedule": "1:2x2"}, "batch_size": 32,
                                    "optim": {"lr": 2e-4, "betas": [0.9, 0.95]}}))
    assert load_config(path).model.overrides == {"schedule": "1:2x2"}  # model fields go to overrides
    cfg = parse(["--config", str(path), "--optim.lr", "5e-4"])
    assert cfg.model.name == "SiT-tiny/2" and cfg.batch_size == 32 and cfg.optim.lr == 5e-4
    assert cfg.optim.betas == [0.9, 0.95]
    d = config_to_dict(cfg)
    assert config_from_dict(d) == cfg
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
    # plain types only: loadable with weights_only=True
    torch.save(d, tmp_path / "d.pt")
    assert torch.load(tmp_path / "d.pt", weights_only=True) == d


def test_every_option_has_help_and_a_cli_flag():
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    text = p.format_help()
    for flag in ("--batch-size", "--optim.lr", "--flow.time-sampling", "--model.schedule", "--data.path",
                 "--ema.decay", "--sample.every", "--parallel", "--grad-checkpointing", "--compile", "--tf32"):
        assert flag in text
    validate(TrainConfig())


def test_old_run_config_and_text_spellings_still_load(tmp_path):
    old = {"model": {"name": "PPF-tiny-2", "init": None, "init_format": None, "overrides": {"input_size": 16},
                     "depth": 2}, "data": {"name": "digits"}, "flow": {"shares": [1, 1]}, "optim": None,
           "max_steps": 1e3, "sample": {"every": "none"}, "model_config": {"depth": 2, "hidden_size": 64}}
    cfg = config_from_dict(old)
    assert cfg.model.overrides == {"input_size": 16, "depth": 2} and cfg.flow.shares == [1.0, 1.0]
    assert cfg.max_steps == 1000 and cfg.sample.every is None and cfg.optim.lr == 1e-4
    cfg = parse(["--max_steps", "2e3", "--flow.shares", "0.5", "--model.input-size", "32,16", "--model.vae", "none",
                 "--optim.betas", "[0.9, 0.95]", "--threads", "none"])
    assert cfg.max_steps == 2000 and cfg.flow.shares == [0.5] and cfg.optim.betas == [0.9, 0.95]
    assert cfg.model.overrides == {"input_size": [32, 16], "vae": None} and cfg.threads is None
    with pytest.raises(ConfigError, match=r"model.stage_init 'bogus' is not one of \('independent', 'pooled'\)"):
        parse(["--model.stage-init", "bogus"])
    with pytest.raises(ConfigError, match=r"optim.betas\[1\]: expected a number, got 'x'"):
        parse(["--optim.betas", "0.9,x"])
    with pytest.raises(ConfigError, match=r"ema.decay must be in \[0, 1\), got 1.0"):
        parse(["--ema.decay", "1"])


def test_flux_config_uses_the_same_functions(tmp_path):
    from ppflow.flux.train_config import FluxTrainConfig

    path = tmp_path / "flux.yaml"
    path.write_text(yaml.safe_dump({"model": {"base": "b", "schedule": "1:2x2"}, "data": {"cache": "c"},
                                    "optim": {"lr": 2e-4}}))
    cfg = load_config(path, FluxTrainConfig)
    assert cfg.model.schedule == "1:2x2" and cfg.optim.lr == 2e-4 and cfg.ema.decay == 0.999 and cfg.batch_size == 4
    cfg = apply_overrides(cfg, {"train.lora-targets": "to_q,to_k", "max-steps": "5", "init": "tiled"})
    assert cfg.train.lora_targets == ["to_q", "to_k"] and cfg.max_steps == 5 and cfg.model.init == "tiled"
    assert config_from_dict(config_to_dict(cfg), FluxTrainConfig) == cfg
    validate(cfg)
    with pytest.raises(ConfigError, match="parallel 'ddp' is not one of auto, none, fsdp"):
        validate(apply_overrides(cfg, {"parallel": "ddp"}))
    with pytest.raises(ConfigError, match="max_steps must be >= 1, got 0"):
        validate(apply_overrides(cfg, {"max_steps": 0}))
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['train.rank'\]"):
        config_from_dict({"train": {"rank": 4}}, FluxTrainConfig)
