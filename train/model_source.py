"""Which model a run builds and what it starts from: the command line, what a checkpoint records about its run
(``--eval --resume``), the class count of the training data, the sub-networks chosen with ``--subnets``, and
``--finetune``'s check that a file's trunk fits the model.
"""
from __future__ import annotations

import os

from supervit.models import extract_state_dict, read_checkpoint, recorded_arch, recorded_model_config, state_fit

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


def resolve_model_source(args, recipe, log) -> tuple[dict | None, dict | None]:
    """Fill in what the user left open before the model is built.

    Returns (the checkpoint read for ``--eval``, or None; the model config to build from it, or None: then
    ``--model`` and the model options name the model).

    * ``--eval --resume CKPT``: the model (and its class count) the checkpoint records, unless ``--model``,
      ``--nb-classes``/``--num-classes`` or ``--model-kwargs`` say otherwise (a released file without our config:
      its recorded model name and its head's width).
    * training on a data folder without ``--nb-classes``: the number of class folders of ``train/``.
    """
    explicit = set(getattr(args, "explicit", ()))
    if args.eval and args.resume:
        ckpt = read_checkpoint(args.resume)
        config = recorded_model_config(ckpt)
        if config is not None and "arch" in config and "model" not in explicit:
            kwargs = dict(config.get("kwargs") or {})
            if args.nb_classes is not None:
                kwargs["num_classes"] = args.nb_classes
            from .recipes import model_kwargs

            kwargs.update(model_kwargs(args))
            log(f"model from {os.path.basename(args.resume)}: {config['arch']} with "
                f"{kwargs.get('num_classes')} classes, sub-networks {kwargs.get('img_sizes')} x "
                f"{kwargs.get('keep_ratios')}")
            return ckpt, {"arch": config["arch"], "kwargs": kwargs}
        arch = recorded_arch(ckpt)
        if not args.demo and "model" not in explicit and arch and arch.startswith("super_"):
            args.model = arch
        if args.nb_classes is None and not args.demo:
            head = extract_state_dict(ckpt).get("head.weight")
            if head is not None and head.dim() == 2:
                args.nb_classes = int(head.shape[0])
        return ckpt, None
    if not args.eval and not args.demo and args.nb_classes is None:
        classes = count_class_folders(args.data_path, recipe.data_arg_name)
        args.nb_classes = classes
        if classes != REGISTERED_DEFAULT_CLASSES:
            log(f"classes: {classes} (the class folders of {os.path.join(args.data_path, 'train')}; the model's "
                f"default is {REGISTERED_DEFAULT_CLASSES}; --nb-classes/--num-classes N to choose)")
    return None, None


def chosen_subnets(args, model, training: bool) -> list[tuple[int, float]]:
    """The sub-networks ``--subnets`` names (all of the model's when absent), in the model's order.

    Raises UsageError naming a sub-network the model does not have, and (``training``) a size listed without its
    full keep, which teaches the size's reduced keeps.
    """
    available = [(int(s), float(r)) for s, r in model.subnets()]
    if not getattr(args, "subnets", None):
        return available
    wanted = {(int(s), float(r)) for s, r in args.subnets}
    unknown = sorted(wanted - set(available))
    if unknown:
        accepted = ",".join(f"{s}:{r:g}" for s, r in available)
        raise UsageError(f"--subnets: the model has no sub-network {', '.join(f'{s}:{r:g}' for s, r in unknown)}; "
                         f"accepted: {accepted}")
    if training:
        no_full = sorted({s for s, _ in wanted if (s, 1.0) not in wanted})
        if no_full:
            raise UsageError(f"--subnets: training needs the full keep of every size listed (it teaches that size's "
                             f"reduced keeps); add {', '.join(f'{s}:1' for s in no_full)}")
    return [pair for pair in available if pair in wanted]


def largest_full(subnets) -> tuple[int, float]:
    """The largest full-keep sub-network of ``subnets`` (the one whose top-1 picks the best checkpoint)."""
    full = [pair for pair in subnets if pair[1] == 1.0]
    return max(full or subnets)


def finetune_state(model, path: str, target: str, allow_partial: bool) -> tuple[dict, dict]:
    """(state dict to load, report) for ``--finetune path``.

    A plain ViT's single ``pos_embed`` fills every position table (bicubic); classifier weights of another class
    count are dropped. A file whose trunk does not fit (tensors other than the heads and position tables missing or
    of another shape) is refused with a UsageError naming them and the model the file came from, unless
    ``allow_partial``.
    """
    from supervit.models import convert_plain_vit_state_dict

    ckpt = read_checkpoint(path)
    state = extract_state_dict(ckpt)
    if "pos_embed" in state and "pos_embed_list.0" not in state:
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
