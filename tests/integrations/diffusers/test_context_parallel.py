"""The PPFlow hook under diffusers' context parallelism (Ulysses, 2 CPU processes, gloo): every stage of FLUX and
Wan equals one process, each rank running half of the stage's tokens; enabling parallelism after `apply` is refused
with the fix."""

import json
import subprocess
import sys
from pathlib import Path

from tests.torchrun import ROOT, env


def test_ulysses_context_parallel_equals_one_process_in_every_stage():
    torchrun = Path(sys.executable).with_name("torchrun")
    worker = Path(__file__).with_name("cp_worker.py")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--standalone", str(worker)], env=env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    for sigma in ("0.2", "0.9"):  # fine, coarse (a quarter of the tokens, split over the two ranks)
        shape, err = res[sigma]
        assert shape == [2, 64, 16] and err < 1e-5
    assert "enable_parallelism(...) first" in res["late"]
    for t, tokens in (("100", 32), ("500", 8), ("900", 4)):  # a rank's half of 64 fine / 16 / 8 coarse tokens
        err, seen = res[f"wan{t}"]
        assert err < 1e-5 and seen == tokens
