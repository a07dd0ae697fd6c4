"""Building the registered models the timm way, including ``pretrained=True`` from a released checkpoint file."""
from __future__ import annotations

import contextlib

import torch
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg

from .checkpoint import (CheckpointError, convert_plain_vit_state_dict, is_plain_vit_state, pick_weights,
                         read_checkpoint, state_fit, strip_wrapper_prefixes)
from .features import SubnetFeatures
from .pretrained import RELEASED_WEIGHTS


def checkpoint_filter_fn(state_dict: dict, model) -> dict:
    """A plain DeiT-S / LV-ViT-S state dict (one ``pos_embed``) converted to the super-network's tables; ours
    unchanged. A file that does not fit the model is refused here in one line (``CheckpointError``), before timm's
    loader would list every ill-shaped tensor; the first convolution and the classifiers are left to timm, which
    adapts them to ``in_chans`` / ``num_classes``."""
    state = strip_wrapper_prefixes(state_dict)
    if is_plain_vit_state(state):
        state = convert_plain_vit_state_dict(state, model)
    adapted = _adapted_by_timm(model)
    fit = state_fit(model, state)
    wrong = {k: v for k, v in fit.wrong_shape.items() if not k.startswith(adapted)}
    missing = [k for k in fit.missing if not k.startswith(adapted)]
    if wrong or missing:
        shapes = [f"{k}: file {a} vs model {b}" for k, (a, b) in list(wrong.items())[:3]]
        raise CheckpointError(f"the pretrained file does not fit {type(model).__name__}: "
                              + "; ".join(shapes or [f"it lacks {missing[:3]}"])
                              + " (a checkpoint of another model?)")
    return state


def _adapted_by_timm(model) -> tuple:
    """Name prefixes of the tensors timm adapts itself when loading pretrained weights (first conv, classifiers)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = [cfg.get("first_conv")] + list(cfg.get("classifier") or [] if not isinstance(cfg.get("classifier"), str)
                                            else [cfg["classifier"]])
    return tuple(f"{n}." for n in names if n)


def _pretrained_state_dict(variant: str, kwargs: dict, use_ema: bool | None) -> dict:
    """Weights of the file named by ``pretrained_cfg_overlay=dict(file=...)``: read weights-only, the EMA or raw
    weights picked by ``pick_weights`` (``use_ema`` None: the weights the run evaluated)."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    if cfg.state_dict is not None:
        return cfg.state_dict
    if not cfg.file:
        raise ValueError(f"{variant}: pretrained=True needs the released checkpoint on disk (nothing is downloaded):"
                         f" fetch it from {RELEASED_WEIGHTS[variant]} and pass "
                         "pretrained_cfg_overlay=dict(file=PATH)")
    return pick_weights(read_checkpoint(cfg.file), ema=use_ema).state


def _drop_state_dict(model) -> None:
    """Forget the loaded weights kept in the pretrained cfg (the model holds its own copy)."""
    for module in model.modules():
        cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)


def build_super_vit(model_class, variant: str, pretrained: bool = False, pretrained_ema: bool | None = None,
                    **kwargs):
    """``build_model_with_cfg`` for a super-network.

    With ``pretrained=True`` the weights come from ``pretrained_cfg_overlay=dict(file=PATH)`` (a released file in
    the DeiT-script or timm-saver format, our own checkpoint, or a plain DeiT-S / LV-ViT-S file whose position table
    is converted), read with ``weights_only=True``; ``pretrained_ema`` picks the EMA weights (default: the weights
    the run evaluated, see ``pick_weights``: the raw ones of a DeiT-script file, the EMA of a timm-saver file that
    keeps one, or what our evaluation recorded). ``num_classes`` / ``in_chans`` different from the file adapt the
    heads (re-initialised) and the first convolution as timm does. ``features_only=True`` wraps the model in timm's
    feature getter with the sub-network (``SubnetFeatures``; ``out_indices``: the last 3 blocks by default).
    ``device`` / ``dtype`` place the new model.
    """
    if "img_size" in kwargs:
        raise ValueError(f"{variant}: img_size is chosen per call (forward's img_size argument); pass "
                         "img_sizes=(...) to change the operating sizes")
    if pretrained:
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay["state_dict"] = _pretrained_state_dict(variant, {**kwargs, "pretrained_cfg_overlay": overlay},
                                                       pretrained_ema)
        kwargs["pretrained_cfg_overlay"] = overlay
    feature_cfg = dict(feature_cls=SubnetFeatures, out_indices=kwargs.pop("out_indices", 3))
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(model_class, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                     feature_cfg=feature_cfg, kwargs_filter=("img_size",), **kwargs)
    if dtype is not None:
        model.to(dtype=dtype)
    _drop_state_dict(model)
    return model
