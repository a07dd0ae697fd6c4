"""One training step of each script on a generated ImageFolder: finite losses, all four sub-networks add gradient,
the reduced-keep sub-networks learn from the teacher the recipe names."""
from __future__ import annotations

import math

import pytest
import torch

from train import engine, main_deit, main_lvvit

from trainer_helpers import (CLASSES, TINY_IMAGENET_MODEL, TINY_LVVIT_MODEL, as_json, grad_vector, write_image_folder,
                      write_token_labels)


@pytest.fixture
def recorder():
    records = []

    def hook(event):
        module = event["module"]
        records.append({**event, "grads": grad_vector(module),
                        "pos_grads": [p.grad.detach().abs().sum().item() if p.grad is not None else 0.0
                                      for p in module.pos_embed_list],
                        "aux_grad": (module.aux_head.weight.grad.abs().sum().item()
                                     if hasattr(module, "aux_head") and module.aux_head.weight.grad is not None
                                     else None)})

    engine.STEP_HOOKS.append(hook)
    yield records
    engine.STEP_HOOKS.remove(hook)


def check_step(records, img_sizes, keep_ratios, teacher_of_last: int):
    assert len(records) == 4, "one training step runs exactly four sub-networks"
    subnets = [r["subnet"] for r in records]
    largest = img_sizes[-1]
    assert subnets[0] == (largest, 1.0) and subnets[1][0] == largest and subnets[1][1] in keep_ratios[:-1]
    assert subnets[2][0] in img_sizes[:-1] and subnets[2][1] == 1.0
    assert subnets[3][0] == subnets[2][0] and subnets[3][1] in keep_ratios[:-1]
    for r in records:
        assert math.isfinite(r["loss"].item()), f"loss of {r['subnet']} is not finite"
    # every sub-network's backward adds gradient to the shared weights
    previous = torch.zeros_like(records[0]["grads"])
    for r in records:
        assert (r["grads"] - previous).abs().sum() > 0, f"sub-network {r['subnet']} added no gradient"
        previous = r["grads"]
    # the position tables of the two sizes drawn get gradient, each first from its own full sub-network
    small_index = list(img_sizes).index(subnets[2][0])
    assert records[0]["pos_grads"][-1] > 0 and records[0]["pos_grads"][small_index] == 0
    assert records[2]["pos_grads"][small_index] > 0
    # teachers: (L, r1) <- (L, 1); (s, r2) <- the recipe's rule
    assert records[1]["teacher"] == 0 and torch.equal(records[1]["teacher_logits"], records[0]["logits"])
    assert records[3]["teacher"] == teacher_of_last
    assert torch.equal(records[3]["teacher_logits"], records[teacher_of_last]["logits"])
    assert records[0]["teacher"] is None and records[2]["teacher"] is None


def test_deit_one_step(tmp_path, recorder):
    data = write_image_folder(tmp_path / "imagenet")
    out = tmp_path / "out"
    metrics = main_deit.main(["--data-path", data, "--model", "super_deit_s", "--nb-classes", str(len(CLASSES)),
                              "--model-kwargs", as_json(TINY_IMAGENET_MODEL), "--batch-size", "4", "--epochs", "1",
                              "--max-steps-per-epoch", "1", "--num_workers", "0", "--output", str(out),
                              "--no-progress", "--device", "cpu", "--clip-grad", "1.0"])
    sizes, ratios = tuple(TINY_IMAGENET_MODEL["img_sizes"]), (0.5, 0.7, 1.0)
    check_step(recorder, sizes, ratios, teacher_of_last=2)  # DeiT: (s, r2) <- (s, 1)
    assert "80_1_acc1" in metrics and len([k for k in metrics if k.endswith("_acc1")]) == 12
    assert (out / "checkpoint.pth").is_file() and (out / "results.json").is_file()
    assert (out / "accuracy_vs_gmacs.png").stat().st_size > 0 and (out / "log.jsonl").is_file()


def test_lvvit_one_step_token_labels(tmp_path, recorder):
    data = write_image_folder(tmp_path / "imagenet")
    labels = write_token_labels(data, tmp_path / "labels", hw=4)
    out = tmp_path / "out"
    metrics = main_lvvit.main([data, "--model", "super_lvvit_s", "--num-classes", str(len(CLASSES)),
                               "--model-kwargs", as_json(TINY_LVVIT_MODEL), "-b", "4", "--epochs", "1",
                               "--max-steps-per-epoch", "1", "-j", "0", "--token-label", "--token-label-data",
                               labels, "--token-label-size", "5", "--model-ema", "--cooldown-epochs", "0",
                               "--output", str(out), "--no-progress", "--device", "cpu"])
    sizes, ratios = tuple(TINY_LVVIT_MODEL["img_sizes"]), (0.5, 0.7, 1.0)
    check_step(recorder, sizes, ratios, teacher_of_last=0)  # LV-ViT reference: (s, r2) <- (L, 1)
    # the aux (token-label) head is trained at (L, 1) only
    assert recorder[0]["aux_grad"] > 0
    assert all(r["aux_grad"] == recorder[0]["aux_grad"] for r in recorder[1:])
    assert len([k for k in metrics if k.endswith("_acc1")]) == 12
    ckpt = torch.load(out / "last.pth.tar", weights_only=False)
    assert {"epoch", "arch", "state_dict", "optimizer", "version", "args", "state_dict_ema", "metric"} <= set(ckpt)


def test_lvvit_per_group_teacher_option(tmp_path, recorder):
    data = write_image_folder(tmp_path / "imagenet", per_class=2)
    main_lvvit.main([data, "--num-classes", str(len(CLASSES)), "--model-kwargs", as_json(TINY_LVVIT_MODEL),
                     "-b", "4", "--epochs", "1", "--max-steps-per-epoch", "1", "-j", "0", "--kd-teacher", "group",
                     "--cooldown-epochs", "0", "--no-progress", "--device", "cpu"])
    assert recorder[3]["teacher"] == 2
