"""Resuming with another number of shards per step (world size x accumulation) changes the trajectory: the run
says so in one line, and says nothing when the shards stay the same (which repeats the run exactly)."""

import shutil

from ppflow.train import load_checkpoint, train
from ppflow.train.checkpoint import save_checkpoint


def written_by(run, tmp_path, name: str, world_size: int):
    """A copy of `run` whose checkpoint says it was written by `world_size` processes."""
    dst = tmp_path / name
    shutil.copytree(run, dst)
    state = load_checkpoint(dst)
    save_checkpoint({**state, "world_size": world_size}, dst / "checkpoints" / "last.pt")
    return dst


def notes(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("note: this run was written by")]


def test_resume_on_another_world_size_notes_the_new_trajectory(run, tmp_path, capsys):
    capsys.readouterr()
    train(resume=written_by(run, tmp_path, "ddp2", 2), overrides={"max_steps": 3})
    (note,) = notes(capsys.readouterr().out)
    assert "written by 2 process(es) x 1 accumulation step(s) and resumes on 1 x 1" in note
    assert "the losses will differ from the original run's from step 3 on" in note
    assert note.endswith("to follow the original trajectory resume with --grad-accum 2")

    # the same 2 shards per step (1 process x 2 accumulation steps): the trajectory is the same, no note
    train(resume=written_by(run, tmp_path, "ddp2-accum", 2), overrides={"max_steps": 3, "grad_accum": 2})
    assert notes(capsys.readouterr().out) == []

    # another accumulation on the same world size changes the shards as well
    shutil.copytree(run, tmp_path / "accum")
    train(resume=tmp_path / "accum", overrides={"max_steps": 3, "grad_accum": 2})
    (note,) = notes(capsys.readouterr().out)
    assert "written by 1 process(es) x 1 accumulation step(s) and resumes on 1 x 2" in note

    train(resume=tmp_path / "ddp2", overrides={"max_steps": 4})  # written by this 1-process run now: no note
    assert notes(capsys.readouterr().out) == []
