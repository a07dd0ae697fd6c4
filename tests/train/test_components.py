"""Pieces of the trainer checked on their own: sub-network draws, KD loss, token-label targets, CLI errors."""
from __future__ import annotations

import random

import pytest
import torch

from train import main_deit, main_lvvit
from train.data import DataError, posterize_bits_safe
from train.engine import kd_loss, sample_subnets
from train.report import format_table
from train.token_label import mix_token_box, token_label_targets


def test_sample_subnets_rule_and_seeding():
    sizes, ratios = (128, 160, 192, 224), (0.5, 0.7, 1.0)
    draws = [sample_subnets(random.Random(7), sizes, ratios) for _ in range(2)]
    assert draws[0] == draws[1]  # reproducible from the seed
    seen = set()
    rng = random.Random(0)
    for _ in range(200):
        (l1, k1), (l2, r1), (s, k2), (s2, r2) = sample_subnets(rng, sizes, ratios)
        assert (l1, k1, l2, k2) == (224, 1.0, 224, 1.0) and s == s2 and s in sizes[:-1]
        assert r1 in (0.5, 0.7) and r2 in (0.5, 0.7)
        seen.add((s, r1, r2))
    assert len(seen) == 12  # every combination occurs


def test_kd_loss_is_batchmean_kl():
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    p = teacher.softmax(-1)
    expected = (p * (p.log() - student.log_softmax(-1))).sum() / 4
    assert kd_loss(student, teacher).item() == pytest.approx(expected.item(), rel=1e-5)
    teacher.requires_grad_(True)
    kd_loss(student.requires_grad_(True), teacher).backward()
    assert teacher.grad is None  # the teacher is detached


def test_token_label_targets_full_box_and_moves():
    num_classes, h = 6, 2
    label = torch.zeros(1, 2, 5, h, h)
    label[0, 1, :, :, :] = torch.arange(5).float().view(5, 1, 1)  # classes 0..4 in the top-5 slots
    label[0, 0, 0, 0, 0] = 8.0  # cell (0, 0) strongly class 0
    label[0, 0, 0, 1, 1] = 8.0  # cell (1, 1) strongly class 0 too; the others are all-zero scores
    box = torch.tensor([[0.0, 0.0, float(h), float(h)]])  # the whole label map
    identity = torch.arange(h * h).view(1, h, h)
    cls, dense = token_label_targets(label, box, identity, num_classes, smoothing=0.1)
    assert cls.shape == (1, num_classes) and dense.shape == (1, h * h, num_classes)
    assert torch.allclose(dense.sum(-1), torch.full((1, h * h), 1.0 + 0.1 / num_classes))  # (1-eps+eps/K) + eps
    assert dense[0, 0].argmax() == 0 and dense[0, 3].argmax() == 0 and dense[0, 1, 0] < dense[0, 0, 0]
    flipped = identity.flip(-1)  # a horizontal flip moves cell (0, 0) to (0, 1)
    _, dense_flip = token_label_targets(label, box, flipped, num_classes)
    assert torch.allclose(dense_flip[0, 1], dense[0, 0]) and torch.allclose(dense_flip[0, 0], dense[0, 1])
    filled = identity.clone()
    filled[0, 0, 0] = -1  # a cell filled by a rotation takes the image-level target
    _, dense_fill = token_label_targets(label, box, filled, num_classes)
    assert torch.allclose(dense_fill[0, 0], cls[0])


def test_smoothing_constants_of_the_reference():
    probs = torch.zeros(1, 1000)
    probs[0, 3] = 1.0
    from train.token_label import smooth

    out = smooth(probs, 0.1)
    assert out[0, 3].item() == pytest.approx(0.9001 + 1e-4) and out[0, 0].item() == pytest.approx(1e-4)


def test_mix_token_box_on_grid():
    import numpy as np

    rng = np.random.RandomState(0)
    for lam in (0.0, 0.3, 0.9, 1.0):
        h1, w1, h2, w2 = mix_token_box(14, lam, rng)
        assert 0 <= h1 <= h2 <= 14 and 0 <= w1 <= w2 <= 14


def test_posterize_zero_bits_is_black():
    from PIL import Image

    img = Image.new("RGB", (4, 4), (200, 100, 50))
    assert posterize_bits_safe(img, 0).getpixel((0, 0)) == (0, 0, 0)
    assert posterize_bits_safe(img, 8) is img


def test_format_table_layout():
    rows = [{"img_size": s, "grid": f"{s // 4}x{s // 4}", "keep_ratio": r, "acc1": 90.0, "acc5": 99.0, "gmacs": 0.01}
            for s in (16, 28) for r in (0.5, 1.0)]
    table = format_table(rows)
    assert table.splitlines()[0] == "| top-1 % (GMACs) | keep 0.5 | keep 1 |"
    assert "| 7x7 (28 px) | 90.00 (0.0100) | 90.00 (0.0100) |" in table


def test_cli_errors_name_the_argument(tmp_path):
    with pytest.raises(DataError, match="--data-path"):
        main_deit.main(["--data-path", str(tmp_path / "missing"), "--device", "cpu"])
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="class folders"):
        main_deit.main(["--data-path", str(tmp_path / "empty"), "--device", "cpu"])
    with pytest.raises(SystemExit):
        main_lvvit.main([str(tmp_path), "--token-label"])  # --token-label without --token-label-data
    with pytest.raises(ValueError, match="--input-size"):
        main_deit.main(["--demo", "--input-size", "224", "--device", "cpu"])


def test_finetune_from_plain_vit_fills_every_position_table(tmp_path):
    from supervit.models import SuperDeiT
    from supervit.models.checkpoint import resize_pos_embed
    from train import digits
    from train.distributed import DistInfo
    from train.runner import finetune_from

    config = {**digits.DEMO_MODEL, "embed_dim": 24, "depth": 4, "num_heads": 2, "prune_layers": (1, 2, 3)}
    torch.manual_seed(0)
    plain = SuperDeiT(**config).state_dict()
    pos_embed = torch.randn(1, 1 + 7 * 7, 24)
    plain = {k: v for k, v in plain.items() if not k.startswith("pos_embed_list")}
    plain["pos_embed"] = pos_embed  # a plain ViT at the largest size (7 x 7 grid)
    plain["head.weight"], plain["head.bias"] = torch.randn(1000, 24), torch.randn(1000)  # ImageNet head
    torch.save({"model": plain}, tmp_path / "plain.pth")
    model = SuperDeiT(**config)
    head_before = model.head.weight.detach().clone()
    finetune_from(model, str(tmp_path / "plain.pth"), DistInfo())
    for i, size in enumerate(model.img_sizes):
        assert torch.allclose(model.pos_embed_list[i], resize_pos_embed(pos_embed, size // 4))
    assert torch.equal(model.pos_embed_list[3], pos_embed)  # same grid: copied as is
    assert torch.equal(model.head.weight, head_before)  # 1000-class head dropped for the 10-class model
    assert torch.equal(model.blocks[0].attn.qkv.weight, plain["blocks.0.attn.qkv.weight"])


def test_bf16_autocast_step_on_cpu(tmp_path):
    metrics = main_deit.main(["--demo", "--model-kwargs", '{"embed_dim": 24, "depth": 4, "num_heads": 2, '
                              '"prune_layers": [1, 2, 3]}', "--batch-size", "8", "--epochs", "1",
                              "--max-steps-per-epoch", "2", "--amp-dtype", "bfloat16", "--no-progress",
                              "--threads", "1", "--device", "cpu"])
    assert 0.0 <= metrics["28_1_acc1"] <= 100.0
