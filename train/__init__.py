"""SuperViT training: the reference command lines (main_deit.py, main_lvvit.py), a CLI over ``supervit.training``.

Modules: ``distributed`` (torchrun/DDP, seeds), ``data`` (ImageFolder sets, transforms, samplers; the device data
path and token-label stores beside it), ``digits`` (the embedded demo data set and model), ``token_label`` (LV-ViT
token-label data, targets, loss), ``engine`` (the optimizer step around ``supervit.training``'s SuperViT step, the
epoch loop, the 12-sub-network evaluation), ``optimization`` (AdamW, the schedule and when it steps, EMA, scaler,
gradient slots on resume), ``compiling`` (``--compile``), ``accounting`` (throughput, time shares, MFU,
``--profile-steps``), ``checkpointing`` (atomic reference-format checkpoints, resume), ``report`` (tables,
JSON/CSV, plot), ``cli`` (shared flags, help, one-line user errors), ``model_source`` (the model from the command
line or a checkpoint, class count, ``--subnets``, ``--finetune`` checks), ``runner`` (the run both scripts share).
"""
