"""What timm's generic model tests and tools ask of a model: pretrained configs and loading, heads, features,
layer decay, gradient checkpointing, FX tracing."""
import argparse

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.optim import param_groups_layer_decay

import supervit  # noqa: F401
from supervit.models import SuperDeiT, SuperLVViT, load_checkpoint, published_accuracy

SMALL = dict(embed_dim=32, depth=4, num_heads=2, prune_layers=(1, 2, 3))  # registered models, shrunk
TINY = dict(img_sizes=(16, 20, 24, 28), patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2,
            num_classes=10, prune_layers=(1, 2, 3))


@pytest.mark.parametrize("name,crop,first_conv,classifier", [
    ("super_deit_s", 0.875, "patch_embed.proj", "head"),
    ("super_lvvit_s", 0.9, "patch_embed.conv1", ("head", "aux_head")),
])
def test_pretrained_cfg(name, crop, first_conv, classifier):
    with torch.device("meta"):
        model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg["paper_ids"] == "arXiv:2205.11397" and "lmbxmu/SuperViT" in cfg["origin_url"]
    assert cfg["input_size"] == (3, 224, 224) and cfg["min_input_size"] == (3, 128, 128)
    assert cfg["interpolation"] == "bicubic" and cfg["first_conv"] == first_conv and cfg["classifier"] == classifier
    assert resolve_data_config(model=model)["crop_pct"] == crop
    names = model.state_dict().keys()
    assert f"{first_conv}.weight" in names
    assert all(f"{c}.weight" in names for c in ((classifier,) if isinstance(classifier, str) else classifier))
    notes = " ".join(cfg["notes"])
    assert "drive.google.com" in notes
    for (size, ratio), top1 in published_accuracy(name).items():
        assert f"top-1 {top1:.2f} at img_size={size} keep_ratio={ratio:g}" in notes


def _deit_script_file(path, model, ema):
    torch.save({"model": model.state_dict(), "model_ema": ema.state_dict(), "optimizer": {}, "epoch": 299,
                "args": argparse.Namespace(model="super_deit_s")}, path)


def _timm_saver_file(path, model, ema):
    torch.save({"epoch": 309, "arch": "super_lvvit_s", "args": argparse.Namespace(model="super_lvvit_s"),
                "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
                "state_dict_ema": ema.state_dict(), "metric": 83.1}, path)


@pytest.mark.parametrize("name,write,ema", [("super_deit_s", _deit_script_file, False),
                                            ("super_lvvit_s", _timm_saver_file, True)])
def test_pretrained_overlay_file_equals_load_checkpoint(tmp_path, name, write, ema):
    torch.manual_seed(0)
    raw, averaged = timm.create_model(name, **SMALL), timm.create_model(name, **SMALL)
    path = tmp_path / "released.pth"
    write(path, raw, averaged)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL).eval()
    ours = timm.create_model(name, **SMALL)
    assert load_checkpoint(ours, path, use_ema=ema).ema == ema  # the recipe's evaluated weights by default
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), ours.eval()(x)) and torch.equal(model(x, 160, 0.5), ours(x, 160, 0.5))
    assert "state_dict" not in model.pretrained_cfg  # the weights are not kept twice
    other = timm.create_model(name, pretrained=True, pretrained_ema=not ema,
                              pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    want = averaged if not ema else raw
    assert torch.equal(other.cls_token, want.cls_token)


def test_pretrained_plain_vit_and_adapted_heads_and_stem(tmp_path):
    torch.manual_seed(0)
    plain = timm.models.VisionTransformer(patch_size=16, embed_dim=32, depth=4, num_heads=2, qkv_bias=True)
    path = tmp_path / "plain_vit.pth"
    torch.save({"model": plain.state_dict()}, path)
    model = timm.create_model("super_deit_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    assert torch.equal(model.pos_embed_list[3], plain.pos_embed) and model.pos_embed_list[0].shape[1] == 65
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), plain.eval()(x), atol=1e-5)
    adapted = timm.create_model("super_deit_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                num_classes=5, in_chans=1, **SMALL)
    assert adapted.head.out_features == 5 and adapted.patch_embed.proj.in_channels == 1
    assert torch.allclose(adapted.patch_embed.proj.weight, plain.patch_embed.proj.weight.sum(1, keepdim=True))
    assert torch.equal(adapted.blocks[2].mlp.fc1.weight, plain.blocks[2].mlp.fc1.weight)


def test_lvvit_pretrained_new_class_count_reinitialises_both_heads(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("super_lvvit_s", **SMALL)
    path = tmp_path / "lvvit.pth"
    _timm_saver_file(path, source, source)
    model = timm.create_model("super_lvvit_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              num_classes=3, in_chans=1, **SMALL)
    assert model.head.out_features == model.aux_head.out_features == 3
    assert torch.allclose(model.patch_embed.conv1.weight, source.patch_embed.conv1.weight.sum(1, keepdim=True))
    with pytest.raises(ValueError, match="img_size is chosen per call"):
        timm.create_model("super_lvvit_s", img_size=160)


def test_pretrained_file_of_another_model_is_one_clear_line(tmp_path):
    from supervit.models import CheckpointError

    path = tmp_path / "deit.pth"
    torch.save({"model": timm.create_model("super_deit_s", **SMALL).state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        timm.create_model("super_lvvit_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "does not fit SuperLVViT" in message and "file (" in message


@pytest.mark.parametrize("name", ["super_deit_s", "super_lvvit_s"])
def test_features_only_takes_the_subnet_per_call_and_by_set_subnet(name):
    torch.manual_seed(0)
    features = timm.create_model(name, features_only=True, **SMALL).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        per_call = features(x, img_size=160, keep_ratio=0.5)
        expected = features.model.forward_intermediates(x, indices=features.out_indices, intermediates_only=True,
                                                        img_size=160, keep_ratio=0.5)
        assert [tuple(m.shape) for m in per_call] == [(2, 32, 10, 10)] * 3
        assert all(torch.equal(a, b) for a, b in zip(per_call, expected))
        assert features.set_subnet(160, 0.5) is features and features.default_subnet == (160, 0.5)
        assert all(torch.equal(a, b) for a, b in zip(features(x), per_call))
    assert len(features.subnets()) == 12


@pytest.mark.parametrize("cls", [SuperDeiT, SuperLVViT])
def test_heads_and_reset_classifier(cls):
    torch.manual_seed(0)
    model = cls(**TINY).eval()
    assert model.head_hidden_size == model.num_features == 32 and model.num_prefix_tokens == 1
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        tokens = model.forward_features(x, 20, 0.7)
        pre = model.forward_head(tokens, pre_logits=True)
        assert torch.equal(pre, tokens[:, 0]) and torch.allclose(model.forward_head(tokens), model(x, 20, 0.7))
        model.reset_classifier(0)
        assert model.num_classes == 0 and torch.equal(model(x, 20, 0.7), pre)
    with pytest.raises(ValueError, match="global_pool must be 'token'"):
        model.reset_classifier(3, "avg")


def test_forward_intermediates_maps_and_kept_positions():
    torch.manual_seed(0)
    model = SuperDeiT(**TINY).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        final, maps, kept = model.forward_intermediates(x, img_size=24, keep_ratio=0.5, return_kept=True)
        tokens, idx = model.forward_trace(x, 24, 0.5)
        assert torch.equal(final, tokens) and len(maps) == 4 and kept[0] is None
        # block 0 (before pruning): the full 6x6 grid; blocks 1-3: kept tokens at their grid positions
        assert maps[0].shape == (2, 32, 6, 6) and maps[0].abs().amin((1)).gt(0).all()
        positions = idx[0]
        for block, step in zip((1, 2, 3), idx):
            positions = step if block == 1 else positions.gather(1, step)
            assert torch.equal(kept[block], positions)
            flat = maps[block].flatten(2)  # [B, C, 36]
            present = flat.abs().sum(1) > 0
            assert present.sum(1).tolist() == [positions.shape[1]] * 2
            assert torch.equal(present, torch.zeros_like(present).scatter(1, positions, True))
        nlc, _ = model.forward_intermediates(x, indices=[3], img_size=24, keep_ratio=0.5, output_fmt="NLC",
                                             norm=True, intermediates_only=True, return_kept=True)
        assert torch.allclose(nlc[0], tokens[:, 1:], atol=1e-6)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW' or 'NLC'"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", ["super_deit_s", "super_lvvit_s"])
def test_features_only_and_pruned_layers(name):
    model = timm.create_model(name, features_only=True, **SMALL).eval()
    assert model.feature_info.channels() == [32, 32, 32] and model.feature_info.reduction() == [16] * 3
    assert len(model.model.blocks) == 4 and isinstance(model.model.norm, torch.nn.Identity)
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 14, 14)] * 3
    trimmed = timm.create_model(name, **SMALL)
    assert trimmed.prune_intermediate_layers([0, 1]) == [0, 1] and len(trimmed.blocks) == 2


def test_layer_decay_groups():
    model = timm.create_model("super_deit_s", **SMALL)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5,
                                      no_weight_decay_list=model.no_weight_decay())
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale["cls_token"] == scale["pos_embed_list.2"] == scale["patch_embed.proj.weight"] == 0.5 ** 5
    assert [scale[f"blocks.{i}.attn.qkv.weight"] for i in range(4)] == [0.5 ** (4 - i) for i in range(4)]
    assert scale["head.weight"] == 1.0 and scale["norm.weight"] >= scale["blocks.3.mlp.fc1.weight"]
    decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert decay["cls_token"] == 0 and decay["pos_embed_list.0"] == 0.05 and decay["blocks.0.norm1.weight"] == 0


def _four_subnet_grads(model, x, y):
    model.zero_grad()
    for size, ratio in ((28, 1.0), (20, 0.5)):
        torch.nn.functional.cross_entropy(model(x, size, ratio), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_gives_the_same_step():
    torch.manual_seed(0)
    model = SuperDeiT(**TINY, drop_path_rate=0.2).train()
    x, y = torch.randn(2, 1, 28, 28), torch.randint(0, 10, (2,))
    torch.manual_seed(1)
    plain = _four_subnet_grads(model, x, y)
    model.set_grad_checkpointing()
    torch.manual_seed(1)
    checkpointed = _four_subnet_grads(model, x, y)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)


@pytest.mark.parametrize("cls", [SuperDeiT, SuperLVViT])
def test_fx_trace_runs_one_subnet_and_refuses_another(cls):
    torch.manual_seed(0)
    model = cls(**TINY).eval().set_subnet(20, 0.5)
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(graph(x), model(x)) and torch.equal(graph(x, 20, 0.5), model(x))
    with pytest.raises(ValueError, match="traced with img_size=20"):
        graph(x, img_size=28)
    other = torch.fx.symbolic_trace(model, concrete_args={"img_size": 28, "keep_ratio": 1.0})
    with torch.no_grad():
        assert torch.equal(other(x, 28, 1.0), model(x, 28, 1.0))


def test_untrained_keep_ratio_and_off_size_input_warn_once():
    torch.manual_seed(0)
    model = SuperDeiT(**TINY).eval()
    with torch.no_grad(), pytest.warns(UserWarning) as record:
        for _ in range(2):
            model(torch.randn(1, 1, 28, 28), keep_ratio=0.6)
            model(torch.randn(1, 1, 22, 22))
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "keep_ratio=0.6 is not one of the trained keep rates [0.5, 0.7, 1.0]" in messages[0]
    assert "input of 22x22 pixels: the model expects 28x28 crops" in messages[1]
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(1, 1, 28, 28), 16, 0.5)  # trained keep rate, crop of the largest size
        model(torch.randn(1, 1, 16, 16), 16, 0.5)  # already the sub-network's size
    with pytest.raises(ValueError, match=r"img_size must be one of \[16, 20, 24, 28\]"):
        model(torch.randn(1, 1, 28, 28), img_size=18)


def test_factory_device_dtype_and_new_heads_follow_the_model():
    model = timm.create_model("super_lvvit_s", device="meta", dtype=torch.float64, **SMALL).eval()
    assert {t.device.type for t in model.state_dict().values()} == {"meta"}
    model.reset_classifier(3)
    for head in (model.head, model.aux_head):
        assert head.weight.device.type == "meta" and head.weight.dtype == torch.float64 and not head.training
    with pytest.raises(TypeError):
        timm.create_model("super_deit_s", device="meta", not_a_model_arg=1)
