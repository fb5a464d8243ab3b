"""Run under torchrun (2 CPU processes, gloo) by test_context_parallel.py: the PPFlow hook on a tiny FLUX and a
tiny Wan with diffusers' context parallelism (Ulysses), each stage against the same model on one process."""

import json
import sys

import torch
import torch.distributed as dist

torch.set_num_threads(1)
torch.accelerator.device_count = lambda: 1  # diffusers picks `rank % device_count()`: on CPU there is none
dist.init_process_group("gloo")

from diffusers import ContextParallelConfig

from ppflow.integrations.diffusers import apply
from tests.flux.conftest import flux_inputs, tiny_flux
from tests.integrations.diffusers.test_wan_hook import tiny_wan, wan_inputs

ref, model = tiny_flux().eval(), tiny_flux().eval()
apply(ref, "ppf2")
model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
apply(model, "ppf2")  # after enable_parallelism: the hook sees the whole token grid
out = {}
with torch.no_grad():
    for sigma in (0.2, 0.9):  # fine, coarse
        kw = flux_inputs(sigma=sigma, text=6)  # every split length divisible by 2
        got, want = model(**kw)[0], ref(**kw)[0]
        out[str(sigma)] = [list(got.shape), float((got - want).abs().max())]
    late = tiny_flux().eval()
    apply(late, "ppf2")
    late.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    try:
        late(**flux_inputs(sigma=0.9, text=6))
        out["late"] = "ran"
    except RuntimeError as e:
        out["late"] = str(e)
wan_ref, wan = tiny_wan(), tiny_wan()
apply(wan_ref, "ppf3-video", boundaries="sigma")
wan.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
apply(wan, "ppf3-video", boundaries="sigma")
tokens = []
wan.blocks[0].attn1.to_q.register_forward_hook(lambda m, a, o: tokens.append(o.shape[1]))
with torch.no_grad():
    for t in (100.0, 500.0, 900.0):  # fine, 1x4x4, 2x4x4
        kw = wan_inputs(timestep=t)
        kw["encoder_hidden_states"] = kw["encoder_hidden_states"][:, :4]  # divisible by 2
        out[f"wan{t:g}"] = [float((wan(**kw)[0] - wan_ref(**kw)[0]).abs().max()), tokens[-1]]
if dist.get_rank() == 0:
    print("RESULT " + json.dumps(out), flush=True)
dist.destroy_process_group()
sys.exit(0)
