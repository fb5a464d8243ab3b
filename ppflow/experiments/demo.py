"""The end-to-end demo behind `make demo`: PPFlow vs its SiT baseline on Fashion-MNIST.

Both models are the same architecture and size, trained with the same budget; they are sampled from the same
noise with the same solver, and compared on test FLOPs, measured sampling speed, in-domain FID (features of a
small Fashion-MNIST classifier), class accuracy of the samples and (when enabled) Inception FID.

Pixels, not latents: Fashion-MNIST is padded to 32x32x1 and cut into 4x4 base patches, so a token carries 16
values and an image is 64 tokens, as an ImageNet-256 SD-VAE latent (32x32x4) at patch 2 carries 16 values per
token. The PPFlow model uses 8x8 patches (16 tokens) for t <= 0.5, as the paper's 4x4-over-2x2 pyramid.
"""

from __future__ import annotations

import csv
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..sampling import sample_model
from ..utils.images import grid, save_image, to_uint8
from ..utils.plots import line_plot
from ..utils.report import Report, format_scales, hardware, millions, plain_json, side_by_side
from .adapters import copy_stage, paired_stage, train_adapter
from .analysis import loss_profile_stage, pareto_stage, speed_stage
from .config import DemoConfig, DemoModel


class Demo:
    """Runs the demo's stages, keeping results so a partial report can be written at any point."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.results: dict[str, dict] = {m.label: {"model": m.name, "schedule": m.schedule} for m in cfg.models}
        self.notes: list[str] = []
        self.commands: list[str] = []
        self.images: list[tuple[str, str]] = []
        self.started = time.time()
        self.threads = torch.get_num_threads()
        self._inception_ref = None

    # --------------------------------------------------------------------------- stages
    def run(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        old_threads = torch.get_num_threads()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.threads = torch.get_num_threads()
        try:
            self.log(f"demo: writing to {self.out} (interrupt with Ctrl-C: checkpoints and a partial report stay)")
            models: dict[str, torch.nn.Module] = {}
            for m in self.cfg.models:
                if m.swap:
                    from ..sampling.swap import StageSwap

                    models[m.label] = StageSwap([models[k] for k in m.swap]).eval()
                elif m.same_as:
                    models[m.label] = self.kept(m) if m.checkpoint else models[m.same_as]
                elif m.adapter is not None:
                    models[m.label] = train_adapter(self, m)
                else:
                    models[m.label] = self.train(m, models)
            self.loss_plot()
            self.profile(models)
            self.grids(models)
            self.speed(models)
            self.metrics(models)
            self.pareto(models)
        except KeyboardInterrupt:
            self.notes.append("Interrupted (Ctrl-C) before the end: this report is partial. Run the same command "
                              "again to continue; finished training runs are reused and unfinished ones resume.")
            path = self.report()
            self.log(f"demo interrupted; partial report: {path}")
            raise
        finally:
            torch.set_num_threads(old_threads)
        path = self.report()
        self.log(f"demo finished in {time.time() - self.started:.0f} s; report: {path} (and {path.with_suffix('.html')})")
        return path

    def log(self, msg: str) -> None:
        tqdm.write(msg, file=sys.stderr)

    def steps(self, m: DemoModel) -> int:
        """Explicit steps or a compute budget, else the baseline's; under equal compute scaled by training FLOPs."""
        if m.steps is not None:
            return m.steps
        if m.budget is not None:  # e.g. 0.1 = a tenth of the baseline's training compute, in this model's steps
            return max(1, round(m.budget * self.cfg.steps / self.train_flops_fraction(m)))
        if self.cfg.protocol == "equal-steps" or m.adapt_from:
            return self.cfg.steps
        return round(self.cfg.steps / self.train_flops_fraction(m))

    def spec(self, label: str) -> DemoModel:
        """The contestant called `label`."""
        return next(d for d in self.cfg.models if d.label == label)

    def schedule_of(self, label: str):
        from ..models.schedule import PyramidSchedule

        return PyramidSchedule.from_string(self.spec(label).schedule)

    def model_config(self, m: DemoModel):
        from ..models.registry import create_config

        return create_config(m.name, schedule=m.schedule, learn_sigma=False, in_channels=1, num_classes=10,
                             input_size=self.cfg.image_size, **m.model)

    def train_flops_fraction(self, m: DemoModel) -> float:
        """Training FLOPs per step of `m` relative to the baseline's (stage-stratified batch with its shares, analytic)."""
        from ..flow.time_sampling import stage_shares
        from ..models.flops import train_flops

        def per_step(d: DemoModel) -> float:
            c = self.model_config(d)
            shares = d.train.get("flow.shares")  # e.g. "1,0": a coarse-only fine-tune
            if isinstance(shares, str) and shares not in ("span", "density"):
                shares = [float(v) for v in shares.split(",")]
            counts = [self.cfg.batch_size * w for w in stage_shares(c.get_schedule(), shares)]
            return train_flops(c, counts)["paper"]

        return per_step(m) / per_step(self.cfg.models[0])

    def train_overrides(self, m: DemoModel) -> dict:
        c = self.cfg
        o = {
            "model.name": m.name, "model.schedule": m.schedule, "model.learn_sigma": False,
            **{f"model.{k}": v for k, v in m.model.items()},
            "data.name": c.data, "data.image_size": c.image_size, "batch_size": c.batch_size,
            "max_steps": self.steps(m), "optim.lr": m.lr or c.lr, "optim.warmup_steps": c.warmup, "ema.decay": c.ema_decay,
            "flow.label_dropout": c.label_dropout, "save_every": m.train.get("keep_every") or max(50, self.steps(m) // 4), "log_every": max(1, self.steps(m) // 100),
            "sample.every": 0, "seed": c.seed, "out": str(self.out / "runs" / _slug(m.label)),
            "device": "cpu", "tensorboard": False, **m.train,
        }
        if c.data_path:
            o["data.path"] = c.data_path
        if c.data_limit:  # a cap: a contestant's own smaller limit (few-shot) stays
            o["data.limit"] = min(c.data_limit, o.get("data.limit") or c.data_limit)
        if c.threads:
            o["threads"] = c.threads
        return o

    def train(self, m: DemoModel, trained: dict[str, torch.nn.Module]) -> torch.nn.Module:
        from ..convert import load_model
        from ..convert.adaptation import adapt
        from ..train import train
        from ..train.checkpoint import find_checkpoint, load_checkpoint

        c = self.cfg
        overrides = self.train_overrides(m)
        run_dir = Path(overrides["out"])
        steps = self.steps(m)
        if m.adapt_from:
            src = self.out / "adapted" / _slug(m.label)
            if not src.exists():
                adapt(trained[m.adapt_from], m.schedule, coarse_output=m.model.get("coarse_output", "v"), init=m.init,
                      calibration=self.calibration() if m.init == "lstsq" else None,
                      generator=torch.Generator().manual_seed(self.cfg.seed)).save_pretrained(src)
            overrides["model.init"] = str(src)
            extra = "".join(f" --coarse-output {v}" for k, v in m.model.items() if k == "coarse_output")
            if m.init == "lstsq":
                extra += f" --init lstsq --calib-data {c.data}" + (f" --calib-path {c.data_path}" if c.data_path else "")
            self.commands.append(f"ppflow adapt --from {self.results[m.adapt_from]['run_dir']} "
                                 f"--schedule {m.schedule} --out {src}{extra} --seed {c.seed}")
        self.commands.append("ppflow train " + " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in overrides.items()))
        last = run_dir / "checkpoints" / "last.pt"
        res = self.results[m.label]
        t0 = time.time()
        if last.exists():
            step = int(load_checkpoint(find_checkpoint(run_dir))["step"])
            if step >= steps:
                self.log(f"[{m.label}] reusing the finished run in {run_dir} ({step} steps)")
            else:
                self.log(f"[{m.label}] resuming {run_dir} at step {step}")
                result = train(resume=run_dir, overrides={"max_steps": steps})
                res["train_steps_per_sec"] = result.steps_per_sec
                if result.interrupted:  # SIGTERM/SIGINT: stop the whole demo, not just this run
                    raise KeyboardInterrupt
        else:
            self.log(f"[{m.label}] training {m.name} ({m.schedule}) for {steps} steps")
            result = train(None, overrides=overrides)
            res["train_steps_per_sec"] = result.steps_per_sec
            if result.interrupted:
                raise KeyboardInterrupt
        res["train_steps"] = steps
        res["train_seconds"] = time.time() - t0
        res["run_dir"] = str(run_dir)
        res["metrics_csv"] = str(run_dir / "metrics.csv")
        model = load_model(run_dir).eval()  # the run's EMA weights
        res["params"] = model.num_parameters()
        res["train_compute"] = steps * self.train_flops_fraction(m) / self.cfg.steps  # in baseline trainings
        if m.adapt_from:
            res["train_compute"] += self.results[m.adapt_from].get("train_compute", 1.0)
        res["final_loss"] = _last(run_dir / "metrics.csv", "loss")
        res.setdefault("train_steps_per_sec", _last(run_dir / "metrics.csv", "steps_per_sec"))
        return model

    def kept(self, m: DemoModel) -> torch.nn.Module:
        """The EMA weights that `m.same_as`'s run kept at step `m.checkpoint`."""
        from ..convert import load_model

        path = Path(self.results[m.same_as]["run_dir"]) / f"ema-{m.checkpoint:07d}"
        if not path.exists():
            raise FileNotFoundError(f"{m.label}: {path} does not exist; give {m.same_as} train={{'keep_every': N}} "
                                    f"with N dividing {m.checkpoint} (and its save_every)")
        self.results[m.label]["train_compute"] = m.checkpoint / self.cfg.steps
        return load_model(path).eval()

    def calibration(self, num: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `num` training images and labels (least-squares adaptation init)."""
        from ..data.registry import DataConfig, build_dataset

        data = build_dataset(DataConfig(name=self.cfg.data, path=self.cfg.data_path, image_size=self.cfg.image_size,
                                        limit=min(num, self.cfg.data_limit or num)))
        return data.get_batch(torch.arange(len(data)))

    def profile(self, models: dict[str, torch.nn.Module]) -> None:
        """Held-out loss per t of every trained contestant (and stage swap) on the same test draws."""
        loss_profile_stage(self, models)

    def loss_plot(self) -> None:
        series = {}
        for m in self.cfg.models:
            r = self.results[m.label]
            if "metrics_csv" not in r or m.adapter is not None:  # evaluation-only, or a distillation loss
                continue
            steps, losses = _read_losses(Path(r["metrics_csv"]))
            scale = self.train_flops_fraction(m)  # x axis: training compute in baseline steps
            offset = self.cfg.steps if m.adapt_from else 0
            series[f"{m.label} ({r['model']})"] = ([offset + s * scale for s in steps], losses)
        line_plot(series, self.out / "loss.png", title="training loss (velocity MSE) against training compute",
                  xlabel="training compute (baseline steps)", ylabel="loss", log_y=True)
        self.images.append(("loss.png", ("Training loss against training compute (one unit = one baseline step; an "
                                        "adapted model starts where its source ended).")))

    def cfg_scales(self, label: str, model: torch.nn.Module) -> list[float]:
        """The contestant's own scales, else stage CFG: 1 in the coarsest stage, `cfg_scale` elsewhere."""
        spec = self.spec(label)
        if spec.cfg_scales is not None:
            return list(spec.cfg_scales)
        k = model.schedule.num_stages
        return [self.cfg.cfg_scale] if k == 1 else [1.0] + [self.cfg.cfg_scale] * (k - 1)

    def sample(self, label: str, model: torch.nn.Module, noise: torch.Tensor, y: torch.Tensor, desc: str,
               steps: int | None = None, stats: dict | None = None) -> torch.Tensor:
        """Samples in eval batches; `stats` receives the paper FLOPs per sample and the wall time."""
        outs, flops, t0 = [], 0.0, time.perf_counter()
        for i in tqdm(range(0, len(noise), self.cfg.eval_batch), desc=desc, leave=False):
            out = sample_model(model, noise[i:i + self.cfg.eval_batch], y[i:i + self.cfg.eval_batch],
                               cfg_scales=self.cfg_scales(label, model), method=self.cfg.method,
                               steps=steps or self.cfg.sample_steps, full_output=True)
            outs.append(out.x)
            flops += out.flops["paper"]
        if stats is not None:
            stats.update(flops_per_sample=flops / len(noise), seconds=time.perf_counter() - t0)
        return torch.cat(outs)

    def grids(self, models: dict[str, torch.nn.Module]) -> None:
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        shape = (80, 1, self.cfg.image_size, self.cfg.image_size)
        noise = torch.randn(shape, generator=g)
        y = torch.arange(80) // 8  # one row per class
        panels = []
        models = {k: m for k, m in models.items() if self.cfg.grid_models is None or k in self.cfg.grid_models}
        for label, model in models.items():
            x = self.sample(label, model, noise, y, f"grid {label}")
            arr = grid(to_uint8(x), nrow=8)
            save_image(arr, self.out / f"samples_{_slug(label)}.png", scale=2)
            panels.append((f"{label}: {self.results[label]['model']}", arr))
        save_image(side_by_side(panels, scale=2), self.out / "samples.png")
        self.images.insert(0, ("samples.png", "Samples from the same noise, same labels (one row per class), "
                               f"{self.cfg.method} {self.cfg.sample_steps} steps, CFG "
                               + ", ".join(f"{k}: {self.cfg_scales(k, m)}" for k, m in models.items())))

    def speed(self, models: dict[str, torch.nn.Module]) -> None:
        """Measured sampling time of each model on the same batch, alternating, vs the FLOPs bound."""
        speed_stage(self, models)

    def metrics(self, models: dict[str, torch.nn.Module]) -> None:
        from ..eval import ClassifierTrainConfig, EvalOptions, evaluate, load_classifier
        from ..eval.classifier import classifier_metrics, classifier_outputs
        from ..eval.sources import array_source

        cache = self.out / "cache"
        clf = load_classifier(cache, train_config=ClassifierTrainConfig(max_steps=self.cfg.classifier_steps),
                              progress=True)
        n = self.cfg.num_eval
        g = torch.Generator().manual_seed(self.cfg.seed + 3)
        noise = torch.randn(n, 1, self.cfg.image_size, self.cfg.image_size, generator=g)
        y = torch.arange(n) % 10
        preds, samples = {}, {}
        for label, model in models.items():
            stats: dict = {}
            images = to_uint8(self.sample(label, model, noise, y, f"eval samples {label}", stats=stats))  # (n, H, W, 1)
            samples[label], preds[label] = images, classifier_outputs(clf, images)[1].argmax(1)
            np.savez(self.out / f"samples_{_slug(label)}.npz", arr_0=images, arr_1=y.numpy())
            m = classifier_metrics(images, y.numpy(), ref="fashion-mnist-test", cache_dir=cache, model=clf)
            res = self.results[label]
            res["classifier_fid"] = m["fid"]
            res["class_accuracy"] = m["accuracy"]
            res["eval_sampling"] = {"steps": self.cfg.sample_steps, **stats}  # reused by the quality-vs-cost sweep
            res["classifier_test_accuracy"] = m.get("classifier_test_accuracy")
            if self.cfg.inception and (self.cfg.inception_models is None or label in self.cfg.inception_models):
                r = evaluate(array_source(images, y.numpy(), name=_slug(label)), self.inception_reference(),
                             EvalOptions(cache_dir=str(cache), classifier=False))
                res.update({"inception_fid": r["fid"], "sfid": r["sfid"], "precision": r["precision"],
                            "recall": r["recall"]})
        paired_stage(self, preds, samples)
        copy_stage(self, samples)
        self.commands.append(f"ppflow eval {self.out}/samples_<model>.npz fashion-mnist-test --json")

    def pareto(self, models: dict[str, torch.nn.Module]) -> None:
        """Classifier FID against sampling FLOPs and wall time at each of `pareto_steps`."""
        pareto_stage(self, models)

    def inception_reference(self):
        """The first `inception_ref` Fashion-MNIST test images, padded like the samples."""
        from ..eval import load_images
        from ..eval.sources import array_source

        if self._inception_ref is None:
            full = load_images("fashion-mnist-test", size=self.cfg.image_size)
            n = min(self.cfg.inception_ref, len(full))
            self._inception_ref = array_source(np.asarray(full.images[:n]), full.labels[:n],
                                               name=f"fashion-mnist-test-{n}")
        return self._inception_ref

    # --------------------------------------------------------------------------- report
    def training_note(self, label: str) -> str:
        m = self.spec(label)
        if m.swap:
            sched = next(iter(self.schedule_of(k) for k in m.swap if self.schedule_of(k).num_stages > 1))
            return "stage swap: " + " + ".join(f"t in ({st.t_start:g}, {st.t_end:g}] from {k}"
                                               for st, k in zip(sched.stages, m.swap))
        if m.same_as:
            return f"= {m.same_as}" + (f" at step {m.checkpoint}" if m.checkpoint else "")
        if m.adapter is not None:
            r = self.results[label]
            how = "data-free" if r.get("data_free") else "on data"
            guided = f", guided {r['guided']:g}" if r.get("guided") else ""
            return f"speed adapter from {m.adapt_from}, +{100 * m.budget:g}% ({r.get('train_steps')} steps), {how}{guided}"
        if m.adapt_from:
            return f"adapted from {m.adapt_from}, +{self.steps(m)} steps" + (f" at lr {m.lr:g}" if m.lr else "")
        return f"scratch, {self.steps(m)} steps"

    def report(self) -> Path:
        c = self.cfg
        rep = Report(c.title)
        protocol = ("equal training compute, the paper's protocol: each model from scratch trains for the baseline's "
                    f"{c.steps} steps times the baseline's training FLOPs per step over its own (analytic, "
                    "stage-stratified batch), so a PPF model, whose step is cheaper, takes more steps"
                    if c.protocol == "equal-compute" else f"equal steps ({c.steps} per model from scratch)")
        rep.text(f"Protocol: {protocol}. All models: same backbone size, batch {c.batch_size}, lr {c.lr}, "
                 f"EMA {c.ema_decay}; pixels 32x32x1 (Fashion-MNIST padded), base patch 4x4. Sampler: {c.method}, "
                 f"{c.sample_steps} steps with the stage boundaries on the grid; CFG scales per stage in the table (default "
                 f"{c.cfg_scale} for the baseline, stage CFG [1, {c.cfg_scale}] for PPFlow as in the paper). Measured on this machine: "
                 f"{hardware()}, torch {torch.__version__}, {self.threads} torch threads.")
        rep.heading("Results")
        header = ["model", "name", "schedule", "training", "training compute (x baseline)", "params (M)",
                  "CFG", "test FLOPs % (with CFG)", "test FLOPs % (no CFG)",
                  "sampling speed-up", "FLOPs bound", "efficiency", "classifier FID", "class accuracy",
                  "paired agreement", "paired PSNR (dB)", "extra params (% of base)"]
        if c.inception:
            header += ["Inception FID", "sFID", "precision", "recall"]
        header += ["held-out loss (x baseline)", "final loss", "train steps/s"]
        rows = []
        for label, r in self.results.items():
            row = [label, r["model"], r["schedule"], self.training_note(label), r.get("train_compute"),
                   millions(r.get("params")), format_scales(r.get("cfg_scales")), r.get("test_flops_percent"),
                   r.get("test_flops_percent_no_cfg"), r.get("speedup"), r.get("flops_bound"), r.get("efficiency"),
                   r.get("classifier_fid"), r.get("class_accuracy"), r.get("paired_agreement"), r.get("paired_psnr"),
                   None if r.get("extra_params") is None else 100 * r["extra_params"]]
            if c.inception:
                row += [r.get("inception_fid"), r.get("sfid"), r.get("precision"), r.get("recall")]
            row += [r.get("heldout_loss_ratio"), r.get("final_loss"), r.get("train_steps_per_sec")]
            rows.append(row)
        rep.table(header, rows)
        rep.text("Test FLOPs: analytic, paper convention, relative to the baseline with CFG everywhere. Speed-up: "
                 "median wall time of full sampling runs of the same batch, models alternating. Classifier FID: "
                 f"Frechet distance in the feature space of a small CNN trained on Fashion-MNIST by ppflow, "
                 f"{c.num_eval} samples (labels balanced) against the 10,000 test images; class accuracy: share of "
                 "samples that CNN assigns to the label they were generated for."
                 + (f" Inception FID / sFID / precision / recall: TF Inception-v3 features as ADM computes them, the "
                    f"same {c.num_eval} samples against the first {c.inception_ref} test images (small-sample FIDs "
                    "are biased upwards; compare rows, not with ImageNet numbers)." if c.inception else ""))
        if getattr(self, "pareto_rows", None):
            rep.heading("Quality against sampling cost")
            rep.table(["model", "sampling steps", "sampling FLOPs % (of the baseline's)", "wall time (s)",
                       "classifier FID", "class accuracy"], self.pareto_rows)
            rep.text(f"Wall time: sampling the {c.num_eval} evaluation images in batches of {c.eval_batch}, one run "
                     "each on this machine (not alternated; the speed-up column above is the careful measurement).")
        for path, caption in self.images:
            rep.image(path, caption)
        if self.notes:
            rep.heading("Notes")
            for n in self.notes:
                rep.text(n)
        rep.heading("Reproduce")
        rep.code(f"# everything above, in one command:\n{c.command}\n# the steps it runs:\n" + "\n".join(self.commands))
        return rep.write(self.out, data={"config": plain_json(dataclasses.asdict(c)), "results": self.results,
                                         "notes": self.notes}, data_name="results.json")


# ------------------------------------------------------------------------------- helpers
def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("loss") not in (None, "")]


def _read_losses(path: Path) -> tuple[list[float], list[float]]:
    rows = _read_metrics(path)
    return [float(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def _last(path: Path, column: str) -> float | None:
    rows = _read_metrics(path)
    return float(rows[-1][column]) if rows and rows[-1].get(column) not in (None, "") else None


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label).strip("_").lower()


def run_demo(cfg: DemoConfig) -> Path:
    """Run the demo; returns the markdown report's path (HTML beside it)."""
    return Demo(cfg).run()
