"""The two super-networks against the numbers in docs/reference.md, timm's DeiT-S, and a plain implementation."""
import pytest
import timm
import torch

import supervit  # noqa: F401  (registers the models)
from supervit.models import SuperDeiT, flops
from naive_forward import naive_forward

SIZES = (128, 160, 192, 224)
# docs/reference.md: sequence length after blocks 3 / 6 / 9 (CLS included).
SEQ_LENS = {
    (128, 0.5): (34, 18, 10), (128, 0.7): (47, 34, 25), (128, 1.0): (65, 65, 65),
    (160, 0.5): (52, 27, 15), (160, 0.7): (72, 52, 38), (160, 1.0): (101, 101, 101),
    (192, 0.5): (74, 38, 20), (192, 0.7): (103, 74, 53), (192, 1.0): (145, 145, 145),
    (224, 0.5): (100, 51, 27), (224, 0.7): (139, 99, 71), (224, 1.0): (197, 197, 197),
}
# docs/reference.md / README: analytic GMACs.
GMACS = {
    "super_deit_s": {128: (0.74, 0.97, 1.44), 160: (1.16, 1.51, 2.27), 192: (1.67, 2.19, 3.32), 224: (2.30, 3.01, 4.60)},
    "super_lvvit_s": {128: (1.12, 1.40, 2.05), 160: (1.74, 2.18, 3.24), 192: (2.50, 3.15, 4.73), 224: (3.43, 4.32, 6.55)},
}


@pytest.fixture(scope="module")
def deit():
    torch.manual_seed(0)
    return timm.create_model("super_deit_s").eval()


@pytest.fixture(scope="module")
def lvvit():
    torch.manual_seed(1)
    model = timm.create_model("super_lvvit_s").eval()
    for bn in (model.patch_embed.bn1, model.patch_embed.bn2, model.patch_embed.bn3):  # non-trivial stats
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return model


def test_parameter_counts(deit, lvvit):
    assert sum(p.numel() for p in deit.parameters()) == 22_170_088
    assert sum(p.numel() for p in lvvit.parameters()) == 26_271_248


def test_deit_state_dict_names_and_shapes(deit):
    sd = deit.state_dict()
    expected = {"cls_token": (1, 1, 384), "patch_embed.proj.weight": (384, 3, 16, 16), "patch_embed.proj.bias": (384,),
                "pos_embed_list.0": (1, 65, 384), "pos_embed_list.1": (1, 101, 384),
                "pos_embed_list.2": (1, 145, 384), "pos_embed_list.3": (1, 197, 384),
                "norm.weight": (384,), "norm.bias": (384,), "head.weight": (1000, 384), "head.bias": (1000,)}
    for i in range(12):
        expected.update({
            f"blocks.{i}.norm1.weight": (384,), f"blocks.{i}.norm1.bias": (384,),
            f"blocks.{i}.attn.qkv.weight": (1152, 384), f"blocks.{i}.attn.qkv.bias": (1152,),
            f"blocks.{i}.attn.proj.weight": (384, 384), f"blocks.{i}.attn.proj.bias": (384,),
            f"blocks.{i}.norm2.weight": (384,), f"blocks.{i}.norm2.bias": (384,),
            f"blocks.{i}.mlp.fc1.weight": (1536, 384), f"blocks.{i}.mlp.fc1.bias": (1536,),
            f"blocks.{i}.mlp.fc2.weight": (384, 1536), f"blocks.{i}.mlp.fc2.bias": (384,)})
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_lvvit_state_dict_names_and_shapes(lvvit):
    shapes = {k: tuple(v.shape) for k, v in lvvit.state_dict().items()}
    stem = {"patch_embed.conv1.weight": (64, 3, 7, 7), "patch_embed.conv2.weight": (64, 64, 3, 3),
            "patch_embed.conv3.weight": (64, 64, 3, 3), "patch_embed.proj.weight": (384, 64, 8, 8),
            "patch_embed.proj.bias": (384,)}
    for j in (1, 2, 3):
        stem.update({f"patch_embed.bn{j}.{n}": (64,) for n in ("weight", "bias", "running_mean", "running_var")})
        stem[f"patch_embed.bn{j}.num_batches_tracked"] = ()
    expected = {"cls_token": (1, 1, 384), "pos_embed_list.0": (1, 65, 384), "pos_embed_list.1": (1, 101, 384),
                "pos_embed_list.2": (1, 145, 384), "pos_embed_list.3": (1, 197, 384), "norm.weight": (384,),
                "norm.bias": (384,), "head.weight": (1000, 384), "head.bias": (1000,),
                "aux_head.weight": (1000, 384), "aux_head.bias": (1000,), **stem}
    for i in range(16):
        expected.update({
            f"blocks.{i}.norm1.weight": (384,), f"blocks.{i}.norm1.bias": (384,),
            f"blocks.{i}.attn.qkv.weight": (1152, 384),
            f"blocks.{i}.attn.proj.weight": (384, 384), f"blocks.{i}.attn.proj.bias": (384,),
            f"blocks.{i}.norm2.weight": (384,), f"blocks.{i}.norm2.bias": (384,),
            f"blocks.{i}.mlp.fc1.weight": (1152, 384), f"blocks.{i}.mlp.fc1.bias": (1152,),
            f"blocks.{i}.mlp.fc2.weight": (384, 1152), f"blocks.{i}.mlp.fc2.bias": (384,)})
    assert shapes == expected
    assert lvvit.blocks[0].norm1.eps == 1e-5 and lvvit.blocks[0].skip_lam == 2.0


@pytest.mark.parametrize("name", ["deit", "lvvit"])
def test_sequence_lengths_match_spec(name, request):
    model = request.getfixturevalue(name)
    x = torch.randn(1, 3, 224, 224)
    seen = []
    hooks = [model.blocks[i].register_forward_hook(lambda m, a, out: seen.append(out[0].shape[1])) for i in (3, 6, 9)]
    try:
        with torch.no_grad():
            for (size, ratio), lengths in SEQ_LENS.items():
                seen.clear()
                model(x, img_size=size, keep_ratio=ratio)
                assert tuple(seen) == lengths, (size, ratio)
                assert tuple(model.sequence_lengths(size, ratio)) == lengths
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("name", list(GMACS))
def test_gmacs_table(name):
    for size, row in GMACS[name].items():
        got = tuple(round(flops(name, size, r), 2) for r in (0.5, 0.7, 1.0))
        assert got == row, (name, size)


def test_full_subnet_equals_timm_deit_small(deit):
    torch.manual_seed(2)
    ref = timm.create_model("deit_small_patch16_224").eval()
    sd = dict(ref.state_dict())
    mine = deit.state_dict()
    sd["pos_embed_list.3"] = sd.pop("pos_embed")
    for i in range(3):
        sd[f"pos_embed_list.{i}"] = mine[f"pos_embed_list.{i}"]
    model = SuperDeiT(embed_dim=384, depth=12, num_heads=6).eval()
    model.load_state_dict(sd)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("name", ["deit", "lvvit"])
@pytest.mark.parametrize("size,ratio", [(224, 0.7), (160, 0.5), (128, 0.7), (192, 1.0), (224, 0.5)])
def test_subnet_matches_plain_implementation(name, size, ratio, request):
    model = request.getfixturevalue(name)
    torch.manual_seed(3)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want_logits, want_kept = naive_forward(model, x, size, ratio)
        tokens, kept = model.forward_trace(x, size, ratio)
        got_logits = model(x, img_size=size, keep_ratio=ratio)
    assert torch.allclose(got_logits, want_logits, atol=2e-5, rtol=1e-4)
    assert len(kept) == len(want_kept) == (3 if ratio < 1 else 0)
    for got, want in zip(kept, want_kept):
        assert torch.equal(got, want)


def test_set_subnet_changes_default(deit):
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        direct = deit(x, img_size=160, keep_ratio=0.5)
        deit.set_subnet(160, 0.5)
        try:
            assert torch.equal(deit(x), direct)
        finally:
            deit.set_subnet(224, 1.0)
        assert not torch.equal(deit(x), direct)


def test_input_of_another_size_is_resized(deit):
    x = torch.randn(1, 3, 224, 224)
    small = torch.nn.functional.interpolate(x, (160, 160), mode="bilinear", align_corners=True)
    with torch.no_grad():
        assert torch.allclose(deit(x, 160, 1.0), deit(small, 160, 1.0), atol=1e-6)
