"""Model argument errors, timm integration, and torch.compile of a sub-network."""
import pytest
import timm
import torch

import supervit  # noqa: F401
from supervit.models import SuperDeiT


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SuperDeiT(img_sizes=(16, 20, 24, 28), patch_size=4, in_chans=1, embed_dim=32, depth=12, num_heads=2,
                     num_classes=10).eval()


@pytest.mark.parametrize("kwargs,match", [
    (dict(img_size=100), r"img_size must be one of \[16, 20, 24, 28\]"),
    (dict(keep_ratio=0.0), r"keep_ratio must be in \(0, 1\]"),
    (dict(keep_ratio=1.2), r"keep_ratio must be in \(0, 1\]"),
    (dict(keep_ratio=float("nan")), r"keep_ratio must be in \(0, 1\]"),
    (dict(keep_ratio="half"), r"keep_ratio must be a number"),
])
def test_bad_subnet_arguments(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(torch.randn(1, 1, 28, 28), **kwargs)


@pytest.mark.parametrize("shape", [(1, 3, 28, 28), (1, 28, 28), (28, 28)])
def test_bad_image_shape(tiny, shape):
    with pytest.raises(ValueError, match=r"x must be an image batch \[B, 1, H, W\]"):
        tiny(torch.randn(*shape))


def test_set_subnet_validates(tiny):
    with pytest.raises(ValueError, match="img_size must be one of"):
        tiny.set_subnet(30, 1.0)


def test_timm_create_model_and_pretrained_without_file_refused():
    model = timm.create_model("super_deit_s", num_classes=10, drop_path_rate=0.1)
    assert model.head.out_features == 10 and model.subnets()[0] == (128, 0.5) and len(model.subnets()) == 12
    with pytest.raises(ValueError, match=r"pretrained=True needs the released checkpoint on disk .*drive\.google"):
        timm.create_model("super_lvvit_s", pretrained=True)


def test_no_weight_decay_excludes_cls_only(tiny):
    assert tiny.no_weight_decay() == {"cls_token"}


def test_torch_compile_fullgraph_subnet(tiny):
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        eager = tiny(x, img_size=24, keep_ratio=0.5)
        compiled = torch.compile(lambda t: tiny(t, img_size=24, keep_ratio=0.5), fullgraph=True)
        assert torch.allclose(compiled(x), eager, atol=1e-5)
