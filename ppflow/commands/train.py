"""`ppflow train`: train a PPFlow model or its SiT baseline (single process or under torchrun)."""

from __future__ import annotations

import sys

from ..errors import CommandError

EPILOG = """\
examples:
  ppflow train --model PPF-tiny-2 --data digits --batch-size 16 --max-steps 200 --out runs/smoke
  ppflow train --resume runs/smoke --max-steps 400
  ppflow train --config train.yaml --optim.lr 2e-4 --model.schedule ppf3
  torchrun --nproc_per_node 8 -m ppflow.cli train --model PPF-XL-2 --data latents --data.path LATENTS \\
      --batch-size 256 --parallel fsdp
Every option is also a YAML key: nested sections (optim: {lr: 2e-4}) or top-level keys (batch_size: 256).
Run folder: config.yaml, metrics.csv, checkpoints/last.pt, ema/ (load with ppflow.load_model), samples/, tb/.
"""


def add_arguments(p) -> None:
    from ..train.config import TrainConfig

    p.epilog = EPILOG
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_run_arguments(p, TrainConfig)


def main(args) -> int:
    from ..train import train
    from ..train.config import TrainConfig

    return run_training("ppflow train", args, train, TrainConfig)


def add_run_arguments(p, config_cls) -> None:
    """--resume, --no-verify and every config option of `config_cls` (each training command has them)."""
    from ..train.config import add_config_arguments

    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a run (its folder or a checkpoint file) exactly where it stopped; options "
                        "given with it amend the run's saved config")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="resume from (or --model.init) a ppflow file whose SHA-256 no longer matches (a deliberate "
                        "edit)")
    add_config_arguments(p, config_cls)


def run_training(command: str, args, run, config_cls, config=None, report=None) -> int:
    """The body of every training command: a new run from `config` or the --config / --key options (or
    --print-config), or --resume; a stop by a signal exits 128 + the signal after saving, a Ctrl-C while starting
    130; `report(result)` prints what a finished run made."""
    from ..train import NonFiniteLossError
    from ..train.config import ConfigError, cli_overrides, config_from_args, config_yaml
    from ..train.signals import TrainingInterrupted

    try:
        if args.resume:
            if args.config:
                raise ConfigError("--config cannot be combined with --resume: the run's saved config is used; "
                                  "amend it with --key value options")
            if args.print_config:
                raise ConfigError("--print-config shows a new run's config; see RUN_DIR/config.yaml for a saved run")
            result = run(resume=args.resume, overrides=cli_overrides(args), verify=args.verify)
        else:
            cfg = config if config is not None else config_from_args(args, config_cls)
            if args.print_config:
                print(config_yaml(cfg), end="")
                return 0
            result = run(cfg, verify=args.verify)
    except NonFiniteLossError as e:  # ValueError (ConfigError ...), OSError (a full disk): ppflow.cli prints them
        raise CommandError(str(e)) from e
    except TrainingInterrupted as e:
        print(f"{command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"{command}: aborted; the last checkpoint written is intact", file=sys.stderr)
        return 130
    if result.interrupted:  # stopped by a signal after saving: say so, and do not report success
        print(f"{command}: stopped at step {result.step}; its checkpoint is saved: continue with {command} "
              f"--resume {result.run_dir}", file=sys.stderr)
        return 128 + (result.stop_signal or 2)
    if report is not None:
        report(result)
    return 0
