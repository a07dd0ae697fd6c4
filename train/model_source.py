"""Which model a run builds and what it starts from: the command line, what a checkpoint records about its run
(``--eval --resume``), the class count of the training data, the sub-networks chosen with ``--subnets``, and
``--finetune``'s check that a file's trunk fits the model.
"""
from __future__ import annotations

import os

from supervit.models import check_subnets, model_config, model_for_checkpoint, read_checkpoint, recorded_model_config
from supervit.models.subnet import Subnet

from .cli import UsageError
from .data import check_split_dir

# Tensors a fine-tuning source may lack or hold in another shape: the classifiers (another class count) and the
# position tables (filled from a plain ViT's single table). Anything else missing is a trunk that does not fit.
FINETUNE_REPLACEABLE = ("head.", "aux_head.", "pos_embed_list.")
REGISTERED_DEFAULT_CLASSES = 1000  # super_deit_s / super_lvvit_s are registered with ImageNet-1k heads


def count_class_folders(data_path: str, arg_name: str) -> int:
    """The number of class folders in ``data_path/train`` (DataError naming ``arg_name`` when there are none)."""
    train = check_split_dir(data_path, "train", arg_name)
    return sum(1 for entry in os.scandir(train) if entry.is_dir())


def resolve_model_source(args, recipe, log):
    """Fill in what the user left open before the model is built.

    Returns (the checkpoint read for ``--eval``, or None; the model it belongs to, or None: then ``--model`` and the
    model options name the model, ``recipe.build_model()``).

    * ``--eval --resume CKPT``: the model the checkpoint belongs to (``supervit.models.model_for_checkpoint``: its
      recorded configuration, else the model it names with its head's class count); ``--model`` must agree with the
      file, ``--nb-classes``/``--num-classes`` and ``--model-kwargs`` override.
    * training on a data folder without ``--nb-classes``: the number of class folders of ``train/``.
    """
    explicit = set(getattr(args, "explicit", ()))
    if args.eval and args.resume:
        from .recipes import model_kwargs

        ckpt = read_checkpoint(args.resume)
        if args.demo and recorded_model_config(ckpt) is None:  # a demo file without our record: the demo model
            return ckpt, None
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in model_kwargs(args).items()}
        if args.nb_classes is not None:
            overrides["num_classes"] = args.nb_classes
        model = model_for_checkpoint(ckpt, name=args.model if "model" in explicit else None,
                                     source=f"--resume {args.resume!r}", **overrides)
        kwargs = model_config(model)["kwargs"]
        log(f"model from {os.path.basename(args.resume)}: {model_config(model)['arch']} with "
            f"{kwargs.get('num_classes')} classes, sub-networks {list(model.img_sizes)} x {list(model.keep_ratios)}")
        return ckpt, model
    if not args.eval and not args.demo and args.nb_classes is None:
        classes = count_class_folders(args.data_path, recipe.data_arg_name)
        args.nb_classes = classes
        if classes != REGISTERED_DEFAULT_CLASSES:
            log(f"classes: {classes} (the class folders of {os.path.join(args.data_path, 'train')}; the model's "
                f"default is {REGISTERED_DEFAULT_CLASSES}; --nb-classes/--num-classes N to choose)")
    return None, None


def chosen_subnets(args, model, training: bool) -> list[Subnet]:
    """The sub-networks ``--subnets`` names (all of the model's when absent), in the model's order.

    Raises SubnetError naming a sub-network the model does not have, and (``training``) UsageError for a size
    listed without its full keep, which teaches the size's reduced keeps.
    """
    if not getattr(args, "subnets", None):
        return check_subnets(model, None)
    wanted = set(check_subnets(model, args.subnets, trained=True, arg="--subnets"))
    if training:
        no_full = sorted({s.img_size for s in wanted if (s.img_size, 1.0) not in wanted})
        if no_full:
            raise UsageError(f"--subnets: training needs the full keep of every size listed (it teaches that size's "
                             f"reduced keeps); add {', '.join(f'{s}:1' for s in no_full)}")
    return [subnet for subnet in check_subnets(model, None) if subnet in wanted]


def finetune_state(model, path: str, target: str, allow_partial: bool) -> tuple[dict, dict]:
    """(state dict to load, report) for ``--finetune path``.

    A plain ViT's single ``pos_embed`` fills every position table (bicubic); classifier weights of another class
    count are dropped. A file whose trunk does not fit (tensors other than the heads and position tables missing or
    of another shape) is refused with a UsageError naming them and the model the file came from, unless
    ``allow_partial``.
    """
    from supervit.models import convert_plain_vit_state_dict, is_plain_vit_state, pick_weights, recorded_arch, \
        state_fit

    ckpt = read_checkpoint(path)
    state = pick_weights(ckpt, ema=False).state
    if is_plain_vit_state(state):
        state = convert_plain_vit_state_dict(state, model)
    shape, missing, unexpected = state_fit(model, state)
    trunk = [k for k in list(shape) + missing if not k.startswith(FINETUNE_REPLACEABLE)]  # shapes first
    source = recorded_arch(ckpt) or "a model it does not name"
    if trunk and not allow_partial:
        described = [f"{k} (file {shape[k][0]} vs model {shape[k][1]})" if k in shape else f"{k} (missing)"
                     for k in trunk[:6]]
        more = f" and {len(trunk) - 6} more" if len(trunk) > 6 else ""
        raise UsageError(f"--finetune {path!r} (written for {source}) does not fit {target}: {len(trunk)} trunk "
                         f"tensor(s) missing or of another shape: {', '.join(described)}{more}; pass "
                         f"--finetune-partial to load only what fits (the rest stays randomly initialised)")
    for key in shape:
        del state[key]
    report = {"source": source, "dropped": sorted(shape), "missing": missing, "unexpected": unexpected,
              "trunk_not_loaded": trunk}
    return state, report
