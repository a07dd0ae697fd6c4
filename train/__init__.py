"""SuperViT training: the reference command lines (main_deit.py, main_lvvit.py) on one shared engine.

Modules: ``distributed`` (torchrun/DDP, seeds), ``data`` (ImageFolder sets, transforms, samplers), ``digits`` (the
embedded demo data set and model), ``token_label`` (LV-ViT token-label data, targets, loss), ``engine`` (the
optimizer step around ``supervit.training``'s SuperViT step, the epoch loop, the 12-sub-network evaluation), ``checkpointing`` (atomic reference-format checkpoints,
resume), ``report`` (tables, JSON/CSV, plot), ``cli`` (shared flags, help, one-line user errors),
``model_source`` (the model from the command line or a checkpoint, class count, ``--subnets``, ``--finetune``
checks), ``runner`` (the run both scripts share).
"""
