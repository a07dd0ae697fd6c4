"""DDP on CPU (Gloo): the no_sync 4-sub-network step gives the averaged gradients; torchrun ranks stay in sync."""
from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from supervit.models import SuperDeiT
from train import digits
from train.distributed import DistInfo, init_distributed
from train.engine import Amp, ClassificationTask, StepContext, train_step

from trainer_helpers import TINY_DEMO_MODEL, as_json, grad_vector

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Each rank draws its own sub-networks (seeded per rank): here rank 0 uses size 16, rank 1 size 24, and size 20 is
# used by no rank. The largest size's table is used only in the first two (no_sync) passes.
RANK_SUBNETS = ([(28, 1.0), (28, 0.5), (16, 1.0), (16, 0.7)], [(28, 1.0), (28, 0.7), (24, 1.0), (24, 0.5)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tiny_model():
    torch.manual_seed(0)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY_DEMO_MODEL.items()}
    return SuperDeiT(**{**digits.DEMO_MODEL, **config})


def _ddp_worker(rank: int, world: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    model = _tiny_model()
    reference = copy.deepcopy(model)
    task = ClassificationTask(torch.nn.CrossEntropyLoss())
    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    ctx = StepContext(model=ddp, module=model, task=task, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                      scaler=None, amp=Amp("cpu", None), info=info)
    ref_ctx = StepContext(model=reference, module=reference, task=task,
                          optimizer=torch.optim.SGD(reference.parameters(), lr=0.0), scaler=None, amp=Amp("cpu", None),
                          info=DistInfo())
    gen = torch.Generator().manual_seed(100 + rank)
    errors = []
    for step in range(2):
        images, labels = torch.randn(6, 1, 28, 28, generator=gen), torch.randint(0, 10, (6,), generator=gen)
        train_step(ctx, images, labels, RANK_SUBNETS[rank], step)
        train_step(ref_ctx, images, labels, RANK_SUBNETS[rank], step)
        expected = grad_vector(reference)
        dist.all_reduce(expected)
        expected /= world
        errors.append((grad_vector(model) - expected).abs().max().item())
        pos = [p.grad.abs().sum().item() if p.grad is not None else 0.0 for p in model.pos_embed_list]
    torch.save({"errors": errors, "pos": pos, "scale": expected.abs().max().item()},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_no_sync_step_averages_gradients(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in results:
        assert max(result["errors"]) <= 1e-6 * max(1.0, result["scale"]), result["errors"]
        # tables of sizes 16, 24, 28 got (averaged) gradient on both ranks; size 20 was used nowhere
        assert result["pos"][0] > 0 and result["pos"][2] > 0 and result["pos"][3] > 0 and result["pos"][1] == 0
    assert results[0]["pos"] == results[1]["pos"]


def test_torchrun_two_ranks_same_weights(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train", "main_deit.py"), "--demo", "--model-kwargs", as_json(TINY_DEMO_MODEL),
           "--batch-size", "16", "--epochs", "1", "--max-steps-per-epoch", "3", "--output", str(out),
           "--no-progress", "--dump-rank-weights", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    rank0 = torch.load(out / "weights_rank0.pth", weights_only=True)
    rank1 = torch.load(out / "weights_rank1.pth", weights_only=True)
    initial = _tiny_model().state_dict()
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0), "training did not change the weights"
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"
    assert (out / "checkpoint.pth").is_file()
