"""Sharding over ranks and gathering back in order, with two real gloo processes."""

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ppflow.eval import dist as edist
from ppflow.eval.features import map_batches


def test_shards_partition_the_items_in_order():
    for n in (0, 1, 7, 10):
        for world in (1, 2, 3):
            ranges = [edist.shard_range(n, r, world) for r in range(world)]
            assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
    assert edist.shard_range(5) == (0, 5) and edist.world_size() == 1 and edist.rank() == 0


def _features(batch: np.ndarray) -> dict[str, torch.Tensor]:
    x = torch.from_numpy(batch.astype(np.float32)).flatten(1)  # (n, 4)
    return {"sum": x.sum(1, keepdim=True), "first": x[:, :2]}


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    images = np.arange(7 * 4, dtype=np.uint8).reshape(7, 2, 2, 1)
    shared = map_batches(_features, images, batch_size=2, progress=False)  # each rank embeds its shard
    start, stop = edist.shard_range(len(images))
    local = map_batches(_features, images[start:stop], batch_size=3, progress=False, local=True)
    empty = map_batches(_features, images[:1] if rank == 0 else images[:0], batch_size=2, progress=False,
                        local=True)  # a rank with nothing still takes part
    np.savez(f"{out}/rank{rank}.npz", shared_sum=shared["sum"], local_sum=local["sum"], first=shared["first"],
             empty_sum=empty["sum"])
    dist.destroy_process_group()


def test_map_batches_gathers_across_two_gloo_ranks(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    want = np.arange(7 * 4).reshape(7, 4).astype(np.float32)
    for rank in range(2):
        r = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_array_equal(r["shared_sum"][:, 0], want.sum(1))
        np.testing.assert_array_equal(r["local_sum"][:, 0], want.sum(1))
        np.testing.assert_array_equal(r["first"], want[:, :2])
        np.testing.assert_array_equal(r["empty_sum"][:, 0], want[:1].sum(1))
