"""Settings of the demo and the reproduction: contestants and the experiment's knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

# the speed adapter of the demos: data-free, distilled along the teacher's CFG-2 trajectories (the sampler's)
ADAPTER = {"data_free": True, "trajectory_cfg": 2.0, "trajectories": 256, "trajectory_steps": 8, "rank": 16}


@dataclass
class DemoModel:
    """One contestant: a label, a model name and its schedule.

    `adapt_from`: start from that contestant's trained weights, adapted to this schedule (average/copy init), and
    train `steps` more (default: the config's steps). `same_as`: reuse that contestant's trained model (an
    evaluation-only variant, e.g. other CFG scales, or with `checkpoint` an earlier step). `cfg_scales`: per-stage scales instead of the default.
    """

    label: str
    name: str
    schedule: str
    adapt_from: str | None = None
    steps: int | None = None
    same_as: str | None = None
    cfg_scales: list[float] | None = None
    lr: float | None = None  # learning rate instead of the config's (fine-tuning an adapted model wants less)
    model: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {"coarse_output": "noise_skip"}
    init: str = "pooled"  # adaptation init: pooled (official average/copy) | lstsq (+ least-squares coarse readout)
    swap: list[str] | None = None  # stage swap: stage s served by the trained contestant swap[s] (no training)
    train: dict = field(default_factory=dict)  # further `ppflow train` options, e.g. {"flow.stage_margin": 0.1}
    checkpoint: int | None = None  # with same_as: that run's EMA kept at this step (its train needs keep_every)
    budget: float | None = None  # instead of steps: training compute as a fraction of the baseline's training
    adapter: dict | None = None  # a speed adapter distilled from `adapt_from` (ppflow.train.distill AdapterSection
    #   fields, e.g. {"guided": 2.0}); `budget` is then a fraction of the source's training compute
    adapter_ema: float | None = None  # the adapter run's EMA decay (default: the config's)


@dataclass
class DemoConfig:
    """Settings of the demo; `DemoConfig.quick()` is the under-a-minute variant used by the tests."""

    out: str = "runs/demo"
    data: str = "fashion-mnist"
    data_path: str | None = None  # folder with the Fashion-MNIST *-ubyte.gz files (default: Debian's)
    data_limit: int | None = None  # train on the first N images only (quick runs)
    image_size: int = 32  # 28x28 padded to 32x32
    models: list[DemoModel] = field(default_factory=lambda: [
        DemoModel("SiT baseline", "SiT-mini/4", "1:4x4"),
        DemoModel("PPF-2", "PPF-mini-2", "0.5:8x8,1:4x4", model={"coarse_output": "noise_skip", "stage_init": "pooled"}),
        DemoModel("PPF-2, CFG everywhere", "PPF-mini-2", "0.5:8x8,1:4x4", same_as="PPF-2", cfg_scales=[2.0, 2.0]),
        DemoModel("SiT -> PPF-2 adapter, +5%", "SiT-mini/4", "0.5:8x8,1:4x4", adapt_from="SiT baseline", budget=0.05,
                  adapter={**ADAPTER, "trajectories": 128}, adapter_ema=0.99, cfg_scales=[2.0, 2.0]),
        # +5% of a 1400-step SiT: 128 trajectories leave ~180 adapter steps (256 would leave ~90)
    ])
    steps: int = 1400  # training steps of the baseline (~4 min for SiT-mini/4 on 2 cores)
    protocol: str = "equal-compute"  # scratch contestants: equal training FLOPs (the paper's) or "equal-steps"
    batch_size: int = 32  # with a fixed time budget, more small steps beat fewer large ones
    lr: float = 1e-3  # short runs of small models like a larger rate than DiT's 1e-4
    warmup: int = 100
    ema_decay: float = 0.995  # short run: 0.9999 (or even 0.999) would still hold much of the random init
    label_dropout: float = 0.1
    method: str = "heun"  # sampler for grids, metrics and timing
    sample_steps: int = 16
    cfg_scale: float = 2.0  # baseline: CFG everywhere; PPF: stage CFG [1, cfg_scale] as in the paper
    num_eval: int = 1000  # samples per model for FID / accuracy
    eval_batch: int = 100
    inception: bool = False  # also Inception FID / sFID / precision / recall (slow on CPU: ~8 images/s)
    inception_models: list[str] | None = None  # contestants with Inception metrics (default: all; ~8 images/s)
    inception_ref: int = 2000  # reference: the first N test images (10,000 would take ~20 min on 2 cores)
    classifier_steps: int | None = None  # cap the in-domain classifier's training (quick runs)
    pareto_steps: list[int] = field(default_factory=list)  # quality vs sampling cost: FID at these step counts
    pareto_models: list[str] | None = None  # labels swept (default: every contestant)
    grid_models: list[str] | None = None  # contestants shown in the sample grid (default: all)
    profile_models: list[str] | None = None  # contestants in the loss profile (default: all but same_as variants)
    profile_num: int = 512  # held-out images of the loss-per-t profile (0: no profile)
    profile_bins: int = 20
    timing_models: list[str] | None = None  # contestants timed against the baseline (default: all)
    timing_batch: int = 100  # at 32, per-step overheads of these tiny models blur the ratio (1.45x vs 1.65x at 100, bound 1.61)
    timing_repeats: int = 3
    seed: int = 0
    threads: int | None = None
    title: str = "ppflow demo: Pyramidal Patchification Flow vs SiT on Fashion-MNIST"
    command: str = "ppflow demo"  # the one command that reproduces the whole report (shown first)

    @classmethod
    def quick(cls, out: str = "runs/demo-quick", **kw) -> DemoConfig:
        base = {
            "out": out, "data_limit": 512, "steps": 12, "batch_size": 16, "warmup": 0, "ema_decay": 0.9,
            "sample_steps": 4, "num_eval": 40, "eval_batch": 40, "classifier_steps": 8, "timing_batch": 8,
            "timing_repeats": 1, "threads": 1,
            "models": [DemoModel("SiT baseline", "SiT-tiny/4", "1:4x4"),
                       DemoModel("PPF-2", "PPF-tiny-2", "0.5:8x8,1:4x4", model={"coarse_output": "noise_skip"}),
                       DemoModel("PPF-2, CFG everywhere", "PPF-tiny-2", "0.5:8x8,1:4x4", same_as="PPF-2",
                                 cfg_scales=[2.0, 2.0]),
                       DemoModel("SiT -> PPF-2 adapter, +5%", "SiT-tiny/4", "0.5:8x8,1:4x4", adapt_from="SiT baseline",
                                 budget=1.0, adapter={**ADAPTER, "trajectories": 16, "trajectory_steps": 1},  # smoke size
                                 cfg_scales=[2.0, 2.0])],
            "profile_num": 32, "profile_bins": 4,
        }
        base.update(kw)
        return cls(**base)
