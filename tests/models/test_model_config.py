"""model_config / create_from_config round trips and the published accuracy table."""
import json

import pytest
import torch

import supervit  # noqa: F401
from supervit.models import SuperDeiT, SuperLVViT, create_from_config, model_config, published_accuracy

DEMO = dict(img_sizes=(16, 20, 24, 28), keep_ratios=(0.5, 0.7, 1.0), prune_layers=(3, 6, 9), patch_size=4,
            in_chans=1, num_classes=10, embed_dim=32, depth=12, num_heads=2, mlp_ratio=4.0, qkv_bias=True)


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("build", [
    lambda: SuperDeiT(**DEMO, drop_path_rate=0.1),
    lambda: SuperLVViT(**{**DEMO, "stem_dim": 16, "qkv_bias": False, "mlp_ratio": 3.0}, drop_path_rate=0.1),
    lambda: SuperLVViT(**{**DEMO, "img_sizes": (8, 12), "keep_ratios": (0.6, 1.0), "prune_layers": (2,)},
                       aux_weight=0.5, norm_eps=1e-6),
])
def test_config_is_json_and_rebuilds_the_same_architecture(build):
    torch.manual_seed(0)
    model = build()
    config = json.loads(json.dumps(model_config(model)))
    rebuilt = create_from_config(config)
    assert type(rebuilt) is type(model)
    assert shapes(rebuilt) == shapes(model)
    assert rebuilt.subnets() == model.subnets() and rebuilt.prune_layers == model.prune_layers
    assert model_config(rebuilt) == config
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, model.img_sizes[-1], model.img_sizes[-1])
    with torch.no_grad():
        size, ratio = model.subnets()[0]
        assert torch.equal(rebuilt.eval()(x, size, ratio), model.eval()(x, size, ratio))


def test_registered_defaults_and_reset_classifier():
    with torch.device("meta"):
        model = supervit.models.super_lvvit_s()
    config = model_config(model)
    assert config["arch"] == "super_lvvit_s" and config["kwargs"]["depth"] == 16
    assert config["kwargs"]["qkv_bias"] is False and config["kwargs"]["stem_dim"] == 64
    model.reset_classifier(5)
    assert model_config(model)["kwargs"]["num_classes"] == 5


@pytest.mark.parametrize("config,match", [
    ({"arch": "vit_small", "kwargs": {}}, "'arch' must be one of"),
    ({"arch": "super_deit_s"}, "must be a dict"),
    ({"arch": "super_deit_s", "kwargs": {"stem_dim": 8}}, r"unknown keys \['stem_dim'\]"),
])
def test_bad_config_names_the_problem(config, match):
    with pytest.raises(ValueError, match=match):
        create_from_config(config)


def test_model_config_refuses_other_models():
    with pytest.raises(ValueError, match="SuperDeiT or SuperLVViT"):
        model_config(torch.nn.Linear(2, 2))


def test_published_accuracy_tables():
    deit, lvvit = published_accuracy("super_deit_s"), published_accuracy("super_lvvit_s")
    assert len(deit) == len(lvvit) == 12
    assert deit[(224, 1.0)] == 80.62 and deit[(128, 0.5)] == 73.75 and deit[(160, 0.7)] == 78.31
    assert lvvit[(224, 1.0)] == 83.47 and lvvit[(192, 0.5)] == 81.12
    with pytest.raises(ValueError, match="arch must be one of"):
        published_accuracy("deit_small")
