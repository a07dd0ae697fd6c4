"""A super-network's architecture as plain JSON-able data, and the model rebuilt from it.

Checkpoints store ``model_config(model)`` so that evaluation and deployment rebuild the same architecture (any
configuration, e.g. the small demo network, not only the two registered defaults) without the training code.
"""
from __future__ import annotations

import copy

from torch import nn

from .layers import ConvStemPatchEmbed, PatchEmbed
from .super_deit import SuperDeiT
from .super_lvvit import SuperLVViT

# arch name -> (model class, patch embedding class it is rebuilt with)
ARCHS: dict[str, tuple[type, type]] = {
    "super_deit_s": (SuperDeiT, PatchEmbed),
    "super_lvvit_s": (SuperLVViT, ConvStemPatchEmbed),
}


def model_config(model: nn.Module) -> dict:
    """``{"arch": "super_deit_s" | "super_lvvit_s", "kwargs": {...}}`` describing ``model``'s architecture.

    Every value is a plain JSON type (lists for tuples); ``create_from_config`` rebuilds the same architecture
    (same state-dict names and shapes, same sub-networks). The classifier width is the current one (after
    ``reset_classifier``).
    """
    for arch, (model_class, stem_class) in ARCHS.items():
        if type(model) is model_class:
            if type(model.patch_embed) is not stem_class:
                raise ValueError(f"model_config: a {model_class.__name__} with a custom patch_embed "
                                 f"({type(model.patch_embed).__name__}) cannot be described by its arguments")
            if len(model.blocks) != model.arch_kwargs["depth"]:
                raise ValueError("model_config: the model's blocks were trimmed (prune_intermediate_layers); it "
                                 "is no longer described by its constructor arguments")
            kwargs = copy.deepcopy(model.arch_kwargs)
            kwargs["num_classes"] = int(model.num_classes)
            return {"arch": arch, "kwargs": kwargs}
    raise ValueError(f"model_config: model must be a SuperDeiT or SuperLVViT, got {type(model).__name__}")


def _arch_keys(arch: str) -> set:
    with_stem = {"aux_weight", "stem_dim"} if arch == "super_lvvit_s" else set()
    return {"img_sizes", "keep_ratios", "prune_layers", "patch_size", "in_chans", "num_classes", "embed_dim",
            "depth", "num_heads", "mlp_ratio", "qkv_bias", "drop_path_rate", "norm_eps", "skip_lam"} | with_stem


def check_model_config(config) -> tuple[str, dict]:
    """(arch, kwargs) of a ``model_config`` dict; ValueError naming what is wrong otherwise."""
    if not isinstance(config, dict) or not isinstance(config.get("kwargs"), dict):
        raise ValueError(f"model config must be a dict {{'arch': one of {sorted(ARCHS)}, 'kwargs': dict}}, "
                         f"got {config!r:.200}")
    arch = config.get("arch")
    if arch not in ARCHS:
        raise ValueError(f"model config 'arch' must be one of {sorted(ARCHS)}, got {arch!r}")
    unknown = sorted(set(config["kwargs"]) - _arch_keys(arch))
    if unknown:
        raise ValueError(f"model config kwargs of {arch} hold unknown keys {unknown}; accepted: "
                         f"{sorted(_arch_keys(arch))}")
    return arch, dict(config["kwargs"])


def create_from_config(config: dict, **overrides) -> nn.Module:
    """The model described by ``config`` (a ``model_config`` result), built through ``timm.create_model``.

    Args:
        config: ``{"arch": ..., "kwargs": {...}}``; missing kwargs take the registered model's defaults.
        overrides: keyword arguments replacing those of the config (e.g. ``drop_path_rate=0.0``).
    """
    import timm

    arch, kwargs = check_model_config(config)
    kwargs.update(overrides)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return timm.create_model(arch, pretrained=False, **kwargs)


def recorded_model_config(checkpoint: dict) -> dict | None:
    """The ``model_config`` a checkpoint saved by our trainer carries (``ckpt["supervit"]["model_config"]``), or
    None (released files, older runs). Not validated: ``create_from_config`` checks it."""
    info = checkpoint.get("supervit") if isinstance(checkpoint, dict) else None
    config = info.get("model_config") if isinstance(info, dict) else None
    return config if isinstance(config, dict) else None


def recorded_arch(checkpoint: dict) -> str | None:
    """The model name a checkpoint records: our model config's arch, else the timm saver's ``arch``, else the DeiT
    script's ``args.model``; None when it names none."""
    config = recorded_model_config(checkpoint) or {}
    for name in (config.get("arch"), checkpoint.get("arch"), getattr(checkpoint.get("args"), "model", None)):
        if isinstance(name, str):
            return name
    return None


def model_identity(model: nn.Module) -> str:
    """A name for ``model``'s architecture: the registered name when it is built as registered (any class count,
    drop-path rate), else the name with a digest of its configuration (``super_lvvit_s-3f2a9c01d4``).

    Latency profiles are keyed by it: two files of one architecture share a profile, two architectures never do.
    """
    import hashlib
    import json

    import timm

    config = model_config(model)
    kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("drop_path_rate", "num_classes")}
    import torch

    with torch.device("meta"):
        registered = model_config(timm.create_model(config["arch"]))["kwargs"]
    if all(registered.get(k) == v for k, v in kwargs.items()):
        return config["arch"]
    digest = hashlib.sha1(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:10]
    return f"{config['arch']}-{digest}"


def model_for_checkpoint(checkpoint: dict, name: str | None = None, source: str = "checkpoint",
                         **overrides) -> nn.Module:
    """The model (random weights) that the weights of ``checkpoint`` belong to.

    Our files record their configuration (any architecture, the demo's included); released files name their
    architecture (timm saver ``arch``, DeiT script ``args.model``); a bare state dict names none, and ``name`` (a
    registered model) says which. When both the file and ``name`` name a model they must agree. Without a recorded
    configuration the class count is the width of the file's ``head``.

    Args:
        name: a registered model name (``super_deit_s``) or None.
        source: how errors name the file (e.g. ``"--checkpoint 'a.pth'"``).
        overrides: constructor arguments replacing the file's (e.g. ``drop_path_rate=0.0``).
    Raises ValueError naming ``source``, ``name`` and the accepted names.
    """
    import timm

    from .checkpoint import CheckpointError, extract_state_dict

    known = timm.list_models("super_*")
    if name is not None and name not in known:
        raise ValueError(f"model name must be one of {known}, got {name!r}")
    config = recorded_model_config(checkpoint)
    recorded = recorded_arch(checkpoint)
    if name is not None and recorded is not None and recorded != name:
        raise ValueError(f"{source} records model {recorded!r} but {name!r} was given; drop the model name or give "
                         f"{recorded!r}")
    if config is not None:
        try:
            return create_from_config(config, **overrides)
        except ValueError as err:
            raise ValueError(f"{source}: its model config cannot be rebuilt: {err}") from None
    arch = recorded or name
    if arch not in known:
        raise ValueError(f"{source} carries no model config and names no known model (recorded {arch!r}); give "
                         f"the model name too (--model NAME), one of {known}")
    kwargs = dict(overrides)
    try:
        head = extract_state_dict(checkpoint).get("head.weight")
    except CheckpointError:
        head = None
    if "num_classes" not in kwargs and head is not None and head.dim() == 2:
        kwargs["num_classes"] = int(head.shape[0])
    return timm.create_model(arch, **kwargs)
