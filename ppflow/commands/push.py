"""`ppflow push`: upload a ppflow model folder or a training run's EMA weights to the Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CommandError
from ..hub.push import build_upload_folder, is_hub_id, push_to_hub
from ..hub.registry import is_release_name
from ..io import check_output_folder, write_text_atomic

DRY_RUN = ".ppflow-dry-run.json"  # in a --dry-run folder: the source it was written for (a rerun may rewrite it)


def add_arguments(p) -> None:
    p.description = ("Upload config.json + model.safetensors + a generated README.md (schedule, FLOPs fraction, "
                     "training config and last metrics of a run) to a Hub model repo. SOURCE is a ppflow folder, a "
                     "`ppflow train` run folder (its ema/ is pushed) or one of its ema-N/ folders, or a speed adapter "
                     "(a `ppflow adapt` run or its ema/: adapter.safetensors + adapter_config.json, with "
                     "--base-model naming the base's hub repo or release; ppflow.load_model(REPO) then applies it "
                     "on that base).")
    p.add_argument("source", help="ppflow folder, run folder (RUN_DIR -> RUN_DIR/ema) or RUN_DIR/ema-N")
    p.add_argument("repo_id", help="hub repo, org/name (created when missing)")
    p.add_argument("--revision", default=None, help="branch to push to (created when missing; default main)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--metric", action="append", default=[], metavar="KEY=VALUE",
                   help="a metric for the card, e.g. --metric fid50k=2.1 (repeatable)")
    p.add_argument("--base-model", default=None, help="hub id of the model this one was adapted from (a speed "
                   "adapter: the base it is applied on; needed when the adapter names a local folder)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--dry-run", metavar="DIR", default=None,
                   help="write what would be uploaded into DIR and upload nothing (DIR: new, empty or an earlier dry "
                        "run of the same SOURCE)")
    p.add_argument("--force", action="store_true", help="--dry-run: write into DIR even when it holds other files")


def parse_metrics(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--metric {item!r}: write KEY=VALUE, e.g. fid50k=2.1")
        out[key.strip()] = value.strip()
    return out


def main(args) -> int:
    if not is_hub_id(args.repo_id):
        raise CommandError(f"{args.repo_id!r} is not a hub repo id of the form org/name")
    if not Path(args.source).exists() and not is_release_name(args.source):
        raise CommandError(f"{args.source} does not exist (and is not a known release name)")
    metrics = parse_metrics(args.metric)
    if args.dry_run:
        source = str(Path(args.source).resolve()) if Path(args.source).exists() else args.source
        check_output_folder(args.dry_run, force=args.force, marker=DRY_RUN, source=source, what="dry run")
        folder = build_upload_folder(args.source, args.repo_id, args.dry_run, metrics=metrics or None,
                                     base_model=args.base_model)
        write_text_atomic(folder / DRY_RUN, json.dumps({"source": source, "repo_id": args.repo_id}), "dry-run record")
        print(f"{folder}: {', '.join(sorted(p.name for p in folder.iterdir() if p.name != DRY_RUN))} (not uploaded)")
        return 0
    url = push_to_hub(args.source, args.repo_id, revision=args.revision, private=args.private or None,
                      commit_message=args.message, metrics=metrics or None, base_model=args.base_model)
    print(url)
    return 0
