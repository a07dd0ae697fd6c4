"""--compile: the compiled 4-sub-network step equals the eager one over several steps (fp32), also under DDP with 2
Gloo processes, and a compiled run equals an eager run; the accounting of every run (log.jsonl, the epoch line),
the device peak table and --profile-steps.

The tests compile with the 'aot_eager' backend: dynamo captures one graph per sub-network without graph breaks
(fullgraph) and AOTAutograd builds the backward, as with inductor, but no code is generated (inductor's C++ build of
each graph takes minutes on 2 CPU cores; benchmarks/bench_train_step.py checks inductor against eager).
"""
from __future__ import annotations

import copy
import json
import os
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from supervit.models import SuperDeiT
from train import accounting, compiling, main_deit, main_lvvit
from train.cli import UsageError
from train.distributed import DistInfo, init_distributed
from train.engine import Amp, ClassificationTask, StepContext, train_step

from test_distributed import free_port
from trainer_helpers import CLASSES, TINY_DEMO_MODEL, TINY_LVVIT_MODEL, as_json, write_image_folder

TINY = dict(img_sizes=(16, 20, 24, 28), patch_size=4, in_chans=1, embed_dim=16, depth=4, num_heads=2,
            num_classes=10, prune_layers=(1, 2, 3))
DRAWS = [[(28, 1.0), (28, 0.5), (16, 1.0), (16, 0.7)], [(28, 1.0), (28, 0.7), (20, 1.0), (20, 0.5)]]
# DDP: two sub-networks per rank (the first backward in no_sync, the second all-reduces), fewer graphs to compile
DDP_DRAWS = [[(28, 1.0), (28, 0.5), None, None], [(28, 1.0), (28, 0.7), None, None]]
# Compiled graphs reorder and fuse float operations: after 4 SGD steps the two runs agree within this (fp32).
CLOSE = dict(rtol=1e-4, atol=1e-6)


class Args:
    compile, compile_backend = True, "aot_eager"


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _context(model, forward_model, info=None):
    # SGD, not AdamW: Adam turns a gradient at rounding level (the key bias's is zero in exact arithmetic) into a
    # full lr step of either sign, which would compare the two codes' rounding noise, not their steps
    return StepContext(model=forward_model, module=model, task=ClassificationTask(torch.nn.CrossEntropyLoss()),
                       optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), scaler=None,
                       amp=Amp("cpu", None), info=info or DistInfo())


def _batch(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, 28, 28, generator=gen), torch.randint(0, 10, (4,), generator=gen)


def test_compiled_step_equals_eager(fresh_dynamo):
    torch.manual_seed(0)
    eager = SuperDeiT(**TINY)
    model = copy.deepcopy(eager)
    compiled = compiling.compile_module(model, Args())
    assert compiled is not model and torch._dynamo.config.recompile_limit >= 12 * compiling.GRAPH_MODES
    ctx_eager, ctx_compiled = _context(eager, eager), _context(model, compiled)
    for step in range(4):
        images, labels = _batch(step)
        a = train_step(ctx_eager, images, labels, DRAWS[step % 2], step + 1)
        b = train_step(ctx_compiled, images, labels, DRAWS[step % 2], step + 1)
        assert b["losses"] == pytest.approx(a["losses"], rel=1e-4, abs=1e-6)
    for (name, p), q in zip(eager.named_parameters(), model.parameters()):
        torch.testing.assert_close(q, p, **CLOSE, msg=name)
    cache = torch._dynamo.eval_frame._debug_get_cache_entry_list(type(model).forward.__code__)
    assert len(cache) == 7  # one graph per sub-network drawn (7 distinct), no graph break, no recompile


def _ddp_worker(rank: int, world: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = SuperDeiT(**TINY)
    reference = copy.deepcopy(model)
    ddp = DistributedDataParallel(compiling.compile_module(model, Args()), find_unused_parameters=True)
    ctx = _context(model, ddp, info)
    ref_ctx = _context(reference, reference)
    ref_ctx.optimizer = torch.optim.SGD(reference.parameters(), lr=0.0)
    errors = []
    for step in range(2):
        images, labels = _batch(10 * rank + step)
        train_step(ctx, images, labels, DDP_DRAWS[rank], step + 1)
        train_step(ref_ctx, images, labels, DDP_DRAWS[rank], step + 1)
        expected = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                              for p in reference.parameters()])
        dist.all_reduce(expected)
        expected /= world
        got = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])
        errors.append((got - expected).abs().max().item() / max(expected.abs().max().item(), 1e-12))
        # the eager reference steps with lr 0: give it the compiled model's weights for the next step
        reference.load_state_dict(model.state_dict())
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save({"errors": errors, "weights": weights}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_compiled_ddp_step_averages_gradients_like_eager(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in results:
        assert max(result["errors"]) < 1e-5, result["errors"]  # relative to the largest gradient
    assert torch.equal(results[0]["weights"], results[1]["weights"]), "the ranks' weights drifted apart"


QUICK = ["--demo", "--model-kwargs", as_json(TINY_DEMO_MODEL), "--batch-size", "16", "--max-steps-per-epoch", "3",
         "--epochs", "1", "--device", "cpu", "--threads", "1", "--subnets", "28:1,28:0.5", "--no-progress"]


def test_compiled_run_equals_eager_run_and_logs_its_accounting(tmp_path, capsys, fresh_dynamo):
    eager = main_deit.main(QUICK + ["--output", str(tmp_path / "eager")])
    compiled = main_deit.main(QUICK + ["--output", str(tmp_path / "compiled"), "--compile", "--compile-backend",
                                       "aot_eager", "--profile-steps", "1"])
    for key in ("28_1_acc1", "28_0.5_acc1", "loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3, abs=0.15), key
    records = [json.loads(line) for line in open(tmp_path / "compiled" / "log.jsonl")]
    eager_records = [json.loads(line) for line in open(tmp_path / "eager" / "log.jsonl")]
    assert records[0]["train_loss"] == pytest.approx(eager_records[0]["train_loss"], rel=1e-4)
    record = records[0]
    shares = [record[f"train_{phase}_share"] for phase in accounting.PHASES]
    assert all(0.0 <= s <= 1.0 for s in shares) and sum(shares) == pytest.approx(1.0)
    assert record["train_images_per_s"] > 0 and record["train_gmacs_per_s"] > 0
    assert record["train_mfu"] is None and record["train_matmul_dtype"] == "fp32"  # no known peak on a CPU
    trace = json.load(open(tmp_path / "compiled" / "profile_rank0.json"))
    assert trace["traceEvents"], "an empty profiler trace"
    # the epoch line names each loss as log.jsonl does and gives the total as the total
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch 1/1: losses"))
    printed = dict(re.findall(r"(full|kd\(full\)|small|kd\(small\)|total) ([0-9.]+)", line))
    for label, key in (("full", "loss_full"), ("kd(full)", "loss_kd_full"), ("small", "loss_small"),
                       ("kd(small)", "loss_kd_small"), ("total", "loss")):
        assert float(printed[label]) == pytest.approx(record[f"train_{key}"], abs=6e-4), label
    assert record["train_loss"] == pytest.approx(sum(record[f"train_{k}"] for k in
                                                     ("loss_full", "loss_kd_full", "loss_small", "loss_kd_small")))
    assert "img/s | data" in line and "fwd+bwd" in line


def test_compiled_lvvit_with_mixtoken_equals_eager(tmp_path, fresh_dynamo):
    data = write_image_folder(tmp_path / "imagenet", per_class=2)
    argv = [data, "--num-classes", str(len(CLASSES)), "--model-kwargs", as_json(TINY_LVVIT_MODEL), "-b", "2",
            "--epochs", "1", "-j", "0", "--device", "cpu", "--threads", "1", "--no-progress", "--aa", "none",
            "--reprob", "0", "--subnets", "80:1,80:0.5,32:1"]
    eager = main_lvvit.main(argv + ["--output", str(tmp_path / "eager")])
    compiled = main_lvvit.main(argv + ["--output", str(tmp_path / "compiled"), "--compile", "--compile-backend",
                                       "aot_eager"])
    records = [json.loads(line) for line in open(tmp_path / "compiled" / "log.jsonl")]
    eager_records = [json.loads(line) for line in open(tmp_path / "eager" / "log.jsonl")]
    assert records[0]["train_loss"] == pytest.approx(eager_records[0]["train_loss"], rel=1e-4)
    assert compiled["80_1_acc1"] == pytest.approx(eager["80_1_acc1"]) and records[0]["train_steps"] == 3


def test_peak_table_and_step_clock():
    assert accounting.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.5e12
    assert accounting.peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert accounting.peak_flops("NVIDIA H200", "tf32") == 494.5e12
    assert accounting.peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert accounting.peak_flops("NVIDIA GeForce RTX 4090", "bf16") is None
    clock = accounting.StepClock(torch.device("cpu"))
    for _ in range(3):
        clock.start()
        for phase in accounting.PHASES:
            clock.mark(phase)
        clock.end_step()
    seconds = clock.seconds()
    assert clock.steps == 3 and set(seconds) == set(accounting.PHASES) and all(v >= 0 for v in seconds.values())


@pytest.mark.parametrize("compile_flag", [False, True])
def test_mixtoken_box_is_a_device_tensor_only_under_compile(compile_flag):
    import argparse

    from supervit.models import SuperLVViT
    from train.recipes import LVViTRecipe

    args = argparse.Namespace(mixup=0.0, cutmix=0.0, smoothing=0.1, no_mix_token=False, cls_weight=1.0,
                              dense_weight=0.5, token_label_targets="exact", compile=compile_flag)
    model = SuperLVViT(**TINY_LVVIT_MODEL)
    task = LVViTRecipe(args).build_task(model)
    images, targets = torch.zeros(2, 3, 80, 80), torch.tensor([0, 1])
    _, _, kwargs = task.prepare(images, targets)
    box = kwargs["mix_box"]
    if compile_flag:  # one compiled graph serves every box
        assert isinstance(box, torch.Tensor) and box.dtype == torch.int64 and box.shape == (4,)
    else:  # eager: 4 ints, checked without reading a tensor back from the device
        assert isinstance(box, tuple) and len(box) == 4 and all(type(c) is int for c in box)
