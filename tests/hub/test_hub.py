"""The Hub, offline: a pre-filled huggingface_hub cache (its own layout: blobs/, snapshots/<commit>/ symlinks,
refs/<branch or tag>) read with HF_HUB_OFFLINE=1; push_to_hub checked by the folder and card it uploads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import ppflow
from ppflow import cli
from ppflow.convert.keymap import CheckpointError
from ppflow.hub import from_hub
from ppflow.hub.push import build_upload_folder, push_to_hub
from ppflow.io import DamagedFileError
from ppflow.models import create_model
from tests.conftest import randomize
from tests.hub.conftest import add_to_hub_cache

REPO = "ppflow-test/tiny-ppf"
ROOT = Path(__file__).resolve().parents[2]


def tiny(seed: int = 0):
    return randomize(create_model("PPF-tiny-2", input_size=8, num_classes=3), seed=seed)


def add_commit(cache: Path, repo_id: str, model, commit: str, refs: tuple[str, ...] = ("main",),
               sub: str = "") -> Path:
    """Put `model` (in `sub`/ of the repo) into the hub cache as huggingface_hub lays a downloaded snapshot out."""
    staged = cache / "staged"
    model.save_pretrained(staged / sub)
    snap = add_to_hub_cache(cache, repo_id, staged, commit, refs)
    shutil.rmtree(staged)
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A cache holding REPO at two commits: v1 (tag) = old weights, main = new weights."""
    from huggingface_hub import scan_cache_dir

    cache = tmp_path / "hf"
    old, new = tiny(1), tiny(2)
    add_commit(cache, REPO, old, "a" * 40, refs=("v1",))
    add_commit(cache, REPO, new, "b" * 40)
    assert {r.repo_id for r in scan_cache_dir(cache).repos} == {REPO}  # huggingface_hub reads it as its own
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, old, new


def same(a, b) -> bool:
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 2])
    return torch.equal(a(x, t, y), b(x, t, y))


def test_offline_load_and_revision_pinning(hub_cache):
    cache, old, new = hub_cache
    assert same(from_hub(REPO, cache_dir=cache), new)  # main
    assert same(ppflow.load_model(REPO, revision="v1", cache_dir=cache), old)  # a tag
    assert same(ppflow.load_model(REPO, revision="a" * 40, cache_dir=cache), old)  # a commit
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        from_hub(REPO, revision="v2", cache_dir=cache)
    with pytest.raises(CheckpointError, match="ppflow-test/other@main is not in the Hugging Face cache"):
        from_hub("ppflow-test/other", cache_dir=cache)


def test_pipeline_repo_layout_and_damaged_weights(hub_cache):
    cache, old, _ = hub_cache
    add_commit(cache, "ppflow-test/pipe", old, "c" * 40, sub="transformer")
    assert same(from_hub("ppflow-test/pipe", cache_dir=cache), old)  # transformer/ of a PPFlowPipeline repo

    snap = add_commit(cache, "ppflow-test/bad", old, "d" * 40)
    blob = (snap / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-8] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match="cached copy of ppflow-test/bad@main .* is damaged.*load it again"):
        from_hub("ppflow-test/bad", cache_dir=cache)


def test_hub_id_through_the_environment_alone(hub_cache, tmp_path):
    """HF_HUB_OFFLINE / HF_HUB_CACHE set before the process starts, as a user would: load_model("org/repo")."""
    cache, _, new = hub_cache
    new.save_pretrained(tmp_path / "expected")
    code = (f"import torch, ppflow; a = ppflow.load_model({REPO!r}); b = ppflow.load_model({str(tmp_path / 'expected')!r});"
            "print(all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items()))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]


def test_commands_take_hub_ids(hub_cache, monkeypatch, capsys):
    import huggingface_hub.constants

    cache, _, _ = hub_cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # where HF_HUB_CACHE would point
    assert cli.main(["info", REPO]) == 0
    assert "snapshots/" + "b" * 40 in capsys.readouterr().out  # main, from the cache


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        ppflow.load_model("runs/typo")  # "runs" exists here: a typo, not a hub repo


def fake_run(run: Path) -> Path:
    """A `ppflow train` run folder as the trainer leaves it: config.yaml, metrics.csv, ema/."""
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "PPF-tiny-2"}, "steps": 200, "seed": 0,
                                                     "model_config": tiny().config.to_dict()}, sort_keys=False))
    (run / "metrics.csv").write_text("step,loss,lr\n100,0.91,0.0001\n200,0.85,0.0001\n")
    tiny(3).save_pretrained(run / "ema")
    return run


def test_upload_folder_and_card_of_a_training_run(tmp_path):
    from huggingface_hub import ModelCard

    run = fake_run(tmp_path / "run")
    folder = build_upload_folder(run, REPO, tmp_path / "up", metrics={"fid_classifier": 74.9})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert same(ppflow.load_model(str(folder)), ppflow.load_model(str(run / "ema")))
    card = (folder / "README.md").read_text()
    assert ModelCard(card).data.library_name == "ppflow"
    for text in ("`0.5:4x4,1:2x2`", "| 0 | (0, 0.5] | 4x4 | 4 |", "%** of the one-stage baseline", "steps: 200",
                 "| loss | 0.85 |", "| step | 200 |", "| fid_classifier | 74.9 |", f"ppflow.load_model({REPO!r})"):
        assert text in card, text
    with pytest.raises(CheckpointError, match="not a ppflow folder"):
        build_upload_folder(tmp_path, REPO, tmp_path / "up2")


class RecordingApi:
    """Stands in for HfApi at the one point no test can reach (the upload); keeps what it was given."""

    def __init__(self, into: Path) -> None:
        self.into, self.calls = into, []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, folder_path, repo_id, **kw):
        shutil.copytree(folder_path, self.into)
        self.calls.append(("upload_folder", repo_id, kw))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


def test_push_to_hub_uploads_the_built_folder(tmp_path):
    api = RecordingApi(tmp_path / "uploaded")
    url = push_to_hub(tiny(), REPO, revision="exp", private=True, api=api)
    assert url == f"https://huggingface.co/{REPO}/commit/0"
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][2]["private"] is True and api.calls[2][2]["revision"] == "exp"
    assert same(ppflow.load_model(str(tmp_path / "uploaded")), tiny())
    with pytest.raises(ValueError, match="not a hub id"):
        push_to_hub(tiny(), "no-slash", api=api)


def test_cli_push_dry_run_and_errors(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    assert cli.main(["push", str(run), REPO, "--dry-run", str(tmp_path / "dry"), "--metric", "fid=3.1"]) == 0
    assert "README.md, config.json, model.safetensors (not uploaded)" in capsys.readouterr().out
    assert "| fid | 3.1 |" in (tmp_path / "dry" / "README.md").read_text()
    for argv, msg in ((["push", str(run), "bad id"], "not a hub repo id"),
                      (["push", str(tmp_path / "none"), REPO], "does not exist"),
                      (["push", str(run), REPO, "--metric", "fid"], "KEY=VALUE")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("ppflow push: ") and msg in err and err.count("\n") == 1


def test_push_never_follows_a_symlink_out_of_the_run_folder(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    secret = tmp_path / "secret.yaml"
    secret.write_text("api_key: do-not-publish\n")
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(secret)
    dry = tmp_path / "dry"
    assert cli.main(["push", str(run), REPO, "--dry-run", str(dry)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run / 'config.yaml'} is a symbolic link to {secret}, outside" in err
    assert not dry.exists()  # nothing written, nothing published
    with pytest.raises(CheckpointError, match="model.safetensors is a symbolic link"):
        weights = tmp_path / "elsewhere.safetensors"
        shutil.move(run / "ema" / "model.safetensors", weights)
        (run / "ema" / "model.safetensors").symlink_to(weights)
        build_upload_folder(run / "ema", REPO, tmp_path / "up")
    (run / "config.yaml").unlink()
    (run / "config.yaml").write_text(secret.read_text())
    (run / "ema" / "model.safetensors").unlink()
    shutil.move(weights, run / "ema" / "model.safetensors")
    assert build_upload_folder(run, REPO, tmp_path / "up").is_dir()


def test_a_speed_adapter_goes_to_the_hub_like_a_lora_and_load_model_applies_it_on_its_base(tmp_path, monkeypatch,
                                                                                           capsys):
    from ppflow.io import content_sha256
    from ppflow.models.adapter import AdapterConfig, add_stage_lora, save_adapter

    base_repo, repo = "ppflow-test/tiny-sit", "ppflow-test/tiny-sit-ppf2-adapter"
    source = randomize(create_model("SiT-tiny/2", input_size=8, num_classes=3), seed=3).eval()
    model = add_stage_lora(ppflow.adapt(source, "ppf2"), rank=2, alpha=2.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02)
    local = tmp_path / "run" / "ema"  # an adapter run's ema/, naming its local base
    save_adapter(model, AdapterConfig(schedule="ppf2", rank=2, alpha=2.0, base=str(tmp_path / "sit"),
                                      base_sha256=content_sha256(source.state_dict())), local)
    api = RecordingApi(tmp_path / "uploaded")
    with pytest.raises(CheckpointError, match="pass --base-model ORG/NAME"):
        push_to_hub(tmp_path / "run", repo, api=api)
    push_to_hub(tmp_path / "run", repo, base_model=base_repo, api=api)
    up = tmp_path / "uploaded"
    assert sorted(p.name for p in up.iterdir()) == ["README.md", "adapter.safetensors", "adapter_config.json"]
    card = (up / "README.md").read_text()
    assert f"base_model: {base_repo}" in card and f"ppflow.load_model({repo!r})" in card
    cache = tmp_path / "hf"
    add_commit(cache, base_repo, source, "d" * 40)
    add_to_hub_cache(cache, repo, up, "e" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = ppflow.load_model(repo)  # the adapter, then the base it names, both from the cache
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([0.2, 0.9]), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model.eval()(x, t, y))
    (up / "adapter.safetensors").write_bytes((up / "adapter.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(DamagedFileError):  # a damaged adapter is never uploaded
        push_to_hub(up, "ppflow-test/other", api=RecordingApi(tmp_path / "again"))
