"""supervit.training as a library: the documented loop of docs/training.md runs (tiny model, a few steps), and the
package imports neither the trainer's scripts nor the deploy tools."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import torch
from timm.data import Mixup
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from supervit.models import SuperDeiT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(img_sizes=(16, 20, 24, 28), patch_size=4, in_chans=1, embed_dim=16, depth=4, num_heads=2,
            num_classes=10, prune_layers=(1, 2, 3))


def documented_loop() -> str:
    text = open(os.path.join(ROOT, "docs", "training.md")).read()
    section = text[text.index("## Your own training loop"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_documented_loop_runs():
    code = documented_loop()
    assert len(code.strip().splitlines()) <= 25, "the example is meant to stay short"
    namespace = {}
    exec(compile(code, "docs/training.md", "exec"), namespace)
    torch.manual_seed(0)
    model = SuperDeiT(**TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = CosineLRScheduler(optimizer, t_initial=2)
    ema = ModelEmaV3(model, decay=0.9)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10)
    gen = torch.Generator().manual_seed(1)
    loader = [(torch.randn(4, 1, 28, 28, generator=gen), torch.randint(0, 10, (4,), generator=gen))
              for _ in range(3)]
    for epoch in range(2):
        losses = namespace["train_one_epoch"](model, loader, optimizer, scheduler, epoch, ema=ema, mixup=mixup)
        assert losses.shape == (4,) and torch.isfinite(losses).all() and (losses[[0, 2]] > 0).all()
    after = model.state_dict()
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
    assert not torch.equal(ema.module.state_dict()["head.weight"], before["head.weight"])
    assert not torch.equal(ema.module.state_dict()["head.weight"], after["head.weight"])


def test_library_imports_no_trainer_or_deploy_code():
    code = ("import sys, supervit.training; bad = sorted(m for m in sys.modules if m == 'train' or "
            "m.startswith(('train.', 'supervit.deploy', 'supervit.serve'))); print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
