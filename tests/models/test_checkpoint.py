"""Loading both released checkpoint formats safely, and converting a plain ViT (formats and tensor names: docs/reference.md)."""
import argparse
import os

import pytest
import timm
import torch

from supervit.models import (CheckpointError, SuperDeiT, SuperLVViT, convert_plain_vit_state_dict,
                             load_checkpoint, read_checkpoint)
from supervit.models.checkpoint import LoadedCheckpoint


def small_deit(seed):
    torch.manual_seed(seed)
    return SuperDeiT(img_sizes=(32, 48, 64), patch_size=16, embed_dim=32, depth=10, num_heads=2, num_classes=7)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("use_ema", [False, True])
def test_deit_script_format(tmp_path, use_ema):
    raw, ema = small_deit(0), small_deit(1)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": raw.state_dict(), "model_ema": ema.state_dict(), "optimizer": {"state": {}},
                "lr_scheduler": {"last_epoch": 3}, "epoch": 3, "scaler": {"scale": 65536.0},
                "args": argparse.Namespace(model="super_deit_s", lr=1e-3)}, path)
    model = small_deit(2)
    loaded = load_checkpoint(model, path, use_ema=use_ema)
    assert same_weights(model, ema if use_ema else raw)
    assert loaded == LoadedCheckpoint(str(path), "deit-script", "model_ema" if use_ema else "model", use_ema, False,
                                      [], [], 3)
    assert "optimizer" not in repr(loaded)  # a summary, not the whole checkpoint


@pytest.mark.parametrize("use_ema", [False, True])
def test_timm_saver_format_with_module_prefix(tmp_path, use_ema):
    torch.manual_seed(0)
    kw = dict(img_sizes=(32, 64), patch_size=16, embed_dim=32, depth=10, num_heads=2, num_classes=7, stem_dim=8)
    raw, ema = SuperLVViT(**kw), SuperLVViT(**kw)
    path = tmp_path / "model_best.pth.tar"
    prefixed = {"module." + k: v for k, v in raw.state_dict().items()}
    torch.save({"epoch": 9, "arch": "super_lvvit_s", "state_dict": prefixed, "optimizer": {},
                "version": 2, "args": argparse.Namespace(model="super_lvvit_s"), "amp_scaler": {},
                "state_dict_ema": ema.state_dict(), "metric": 81.5}, path)
    model = SuperLVViT(**kw)
    loaded = load_checkpoint(model, path, use_ema=use_ema)
    assert same_weights(model, ema if use_ema else raw)
    assert (loaded.source_format, loaded.ema, loaded.epoch) == ("timm-saver", use_ema, 9)


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": Exploit()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        read_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_missing_files_name_the_file(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"model": small_deit(0).state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="nothere.pth"):
        read_checkpoint(tmp_path / "nothere.pth")


def test_wrong_model_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": small_deit(0).state_dict()}, path)
    other = SuperDeiT(img_sizes=(32, 48, 64), patch_size=16, embed_dim=64, depth=10, num_heads=2, num_classes=7)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(other, path)
    with pytest.raises(CheckpointError, match="use_ema=True"):
        load_checkpoint(small_deit(0), path, use_ema=True)


def test_plain_deit_small_converts_by_bicubic_interpolation(tmp_path):
    torch.manual_seed(0)
    plain = timm.create_model("deit_small_patch16_224")
    model = timm.create_model("super_deit_s")
    state = convert_plain_vit_state_dict(plain.state_dict(), model)
    model.load_state_dict(state)
    pos = plain.pos_embed.detach()
    assert torch.equal(model.pos_embed_list[3], pos)
    for i, grid in enumerate((8, 10, 12)):
        table = model.pos_embed_list[i].detach()
        assert table.shape == (1, 1 + grid * grid, 384)
        assert torch.equal(table[:, 0], pos[:, 0])
        want = torch.nn.functional.interpolate(pos[:, 1:].reshape(1, 14, 14, 384).permute(0, 3, 1, 2), (grid, grid),
                                               mode="bicubic", align_corners=False)
        assert torch.allclose(table[:, 1:], want.permute(0, 2, 3, 1).reshape(1, -1, 384), atol=1e-6)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), plain.eval()(x), atol=1e-5)
    path = tmp_path / "deit_small.pth"
    torch.save({"model": plain.state_dict()}, path)
    fresh = timm.create_model("super_deit_s")
    assert load_checkpoint(fresh, path).converted_plain_vit
    assert torch.equal(fresh.pos_embed_list[1], model.pos_embed_list[1])
