"""What differs between the DeiT and LV-ViT scripts: model, data sets, loss task, teacher rule, checkpoint format.

Each recipe builds from the parsed ``args`` of its script. ``args.demo`` swaps the data for the embedded digits
(``train/digits.py``) and the model for the demo configuration of the same class.
"""
from __future__ import annotations

import json

import timm
import torch
from torch import nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

import supervit.models  # noqa: F401 - registers super_deit_s / super_lvvit_s with timm
from supervit.models import SuperDeiT, SuperLVViT

from . import data as data_lib
from . import digits
from supervit.training import ClassificationTask, teacher_rule


def model_kwargs(args) -> dict:
    """``--model-kwargs`` JSON (e.g. '{"embed_dim": 64, "depth": 4, "prune_layers": [1, 2, 3]}') as a dict."""
    raw = getattr(args, "model_kwargs", None)
    if not raw:
        return {}
    if isinstance(raw, dict):
        return dict(raw)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model-kwargs must be a JSON object, got {raw!r}: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--model-kwargs must be a JSON object, got {raw!r}")
    return value


def _tuples(kwargs: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


class Recipe:
    """Base recipe; subclasses set the class attributes and ``build_task``."""

    name = "base"
    ckpt_format = "deit"
    model_class: type = SuperDeiT
    eval_crop_pct = 0.875
    eval_uses_ema = False          # evaluate the EMA weights during training
    scales_lr_by_batch = False     # --lr is per 512 images unless --unscale-lr
    cooldown_adds_epochs = False   # timm's loop: --cooldown-epochs run after --epochs
    lr_epoch_lag = 0               # epoch e trains at sched(e - lag): the DeiT script steps after each epoch (1)
    script_name = ""               # the script under train/ that runs this recipe

    def __init__(self, args):
        self.args = args

    # -- model --------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The model the command line names (``--model``, ``--model-kwargs``, ``--nb-classes``; the demo model with
        ``--demo``). An ``--eval`` checkpoint's own model comes from ``model_source.resolve_model_source``."""
        args = self.args
        extra = _tuples(model_kwargs(args))
        if args.demo:
            config = {**digits.DEMO_MODEL, **self.demo_model_extra(), **extra}
            return self.model_class(drop_path_rate=args.drop_path, **config)
        if args.model not in timm.list_models("super_*"):
            raise ValueError(f"--model must be one of {timm.list_models('super_*')}, got {args.model!r}")
        if args.nb_classes is not None:
            extra.setdefault("num_classes", args.nb_classes)
        return timm.create_model(args.model, drop_path_rate=args.drop_path, **extra)

    def demo_model_extra(self) -> dict:
        return {}

    # -- data ---------------------------------------------------------------------------------------------------
    def eval_set(self, model):
        args = self.args
        if args.demo:
            return digits.digits_datasets()[1]
        return data_lib.image_folder(args.data_path, "val", data_lib.eval_transform(model.img_sizes[-1],
                                                                                     self.eval_crop_pct),
                                     self.data_arg_name)

    def train_set(self, model):
        """(dataset, collate_fn or None, batch_transform or None): ``batch_transform(images, targets) -> (images,
        targets)`` runs on the device right after the host-to-device copy."""
        args = self.args
        if args.demo:
            return digits.digits_datasets()[0], digits.RandomAffineCollate() if args.demo_aug else None, None
        if getattr(args, "data_backend", "pil") == "device":  # workers read bytes; decode and augment on the device
            from .device_data import device_train_set

            return device_train_set(args.data_path, self.data_arg_name, args, model.img_sizes[-1])
        return data_lib.image_folder(args.data_path, "train", data_lib.train_transform(args, model.img_sizes[-1]),
                                     self.data_arg_name), None, None

    data_arg_name = "--data-path"

    def teachers(self) -> tuple:
        return teacher_rule(self.args.kd_teacher)

    def data_config(self, model) -> dict:
        """What a deployment needs to preprocess images for ``model`` as its evaluation did (recorded in every
        checkpoint): input_size [C, H, W], mean and std per channel, the resize interpolation, and crop_pct (the
        centre crop's share of the resized side)."""
        side = int(model.img_sizes[-1])
        if self.args.demo:  # the digits: already 28 x 28, normalised by one mean and std
            return {"input_size": [int(model.in_chans), side, side], "mean": [digits.DIGITS_MEAN] * model.in_chans,
                    "std": [digits.DIGITS_STD] * model.in_chans, "interpolation": "bilinear", "crop_pct": 1.0}
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return {"input_size": [int(model.in_chans), side, side], "mean": list(IMAGENET_DEFAULT_MEAN),
                "std": list(IMAGENET_DEFAULT_STD), "interpolation": "bicubic", "crop_pct": float(self.eval_crop_pct)}

    def build_task(self, model):
        raise NotImplementedError


class DeiTRecipe(Recipe):
    """The DeiT-S recipe: Mixup/CutMix + soft-target CE, KD per size group, DeiT checkpoint format."""

    name = "deit"
    ckpt_format = "deit"
    model_class = SuperDeiT
    eval_crop_pct = 0.875
    scales_lr_by_batch = True
    lr_epoch_lag = 1  # lr_scheduler.step(epoch) after each epoch: epochs 0 and 1 at the warm-up start
    script_name = "main_deit.py"

    def build_task(self, model):
        args = self.args
        mixup_active = args.mixup > 0 or args.cutmix > 0.0 or args.cutmix_minmax is not None
        mixup_fn = None
        if mixup_active:
            mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                             prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                             label_smoothing=args.smoothing, num_classes=model.num_classes)
            criterion = SoftTargetCrossEntropy()
        elif args.smoothing:
            criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
        else:
            criterion = torch.nn.CrossEntropyLoss()
        return ClassificationTask(criterion, mixup_fn)


class LVViTRecipe(Recipe):
    """The LV-ViT-S recipe: token labelling + MixToken, KD from (L, 1), EMA eval, timm-saver format."""

    name = "lvvit"
    ckpt_format = "timm"
    model_class = SuperLVViT
    eval_crop_pct = 0.9  # Resize(248) -> CenterCrop(224)
    data_arg_name = "data_dir"
    cooldown_adds_epochs = True
    script_name = "main_lvvit.py"

    @property
    def eval_uses_ema(self):
        return bool(self.args.model_ema)

    def demo_model_extra(self) -> dict:
        return {"stem_dim": 16, "qkv_bias": False, "mlp_ratio": 3.0}

    def train_set(self, model):
        args = self.args
        if args.demo or not args.token_label:
            if not args.demo and args.token_label_data:
                raise ValueError("--token-label-data is given but --token-label is not; add --token-label")
            return super().train_set(model)
        from .token_label import TokenLabelDataset, TokenLabelTransform

        if not args.token_label_data:
            raise ValueError("--token-label needs --token-label-data DIR (DIR/<class_dir>/<image_stem>.pt files)")
        grid = model.img_sizes[-1] // model.patch_size
        if args.token_label_size != grid:
            raise ValueError(f"--token-label-size must equal the largest token grid {grid}, got "
                             f"{args.token_label_size}")
        if getattr(args, "data_backend", "pil") == "device":  # decode, augment and place the labels on the device
            from .device_data import device_token_label_set

            return device_token_label_set(args.data_path, args.token_label_data, self.data_arg_name, args,
                                          model.img_sizes[-1])
        transform = TokenLabelTransform(model.img_sizes[-1], args.token_label_size, scale=tuple(args.scale),
                                        ratio=tuple(args.ratio), interpolation=args.train_interpolation,
                                        hflip=args.hflip, auto_augment=None if args.aa in (None, "", "none")
                                        else args.aa, reprob=args.reprob, remode=args.remode, recount=args.recount,
                                        targets=args.token_label_targets)
        return TokenLabelDataset(args.data_path, args.token_label_data, transform, self.data_arg_name), None, None

    def build_task(self, model):
        from .token_label import TokenLabelTask

        args = self.args
        if args.mixup > 0 or args.cutmix > 0:
            raise ValueError("the LV-ViT recipe trains with MixToken; --mixup/--cutmix must be 0")
        return TokenLabelTask(model.num_classes, model.img_sizes[-1] // model.patch_size, smoothing=args.smoothing,
                              mix_token=not args.no_mix_token, cls_weight=args.cls_weight,
                              targets=getattr(args, "token_label_targets", "exact"),
                              dense_weight=args.dense_weight, box_as_tensor=getattr(args, "compile", False))
