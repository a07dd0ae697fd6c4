"""The demo's confidence cascade: fitted on one stratified half of the 1,000 held-out digits, reported on the other.

After the demo trains, this prints the cascade's top-1 and mean GMACs beside the static table, how the same fit
does on 20 other stratified splits, its wall time at batch 256 against the reference sub-network, writes
``cascade.json`` and redraws ``accuracy_vs_gmacs.png`` with the cascade's curve over the static points.
"""
from __future__ import annotations

import json
import os

from supervit.deploy.cascade_study import format_split_study, format_study, format_timing, study, time_study
from supervit.deploy.cli_common import model_gmacs
from supervit.files import atomic_write

from . import digits, report

WALL_TIME_BATCH = 256
SPLITS = 20  # other stratified splits the cascade is fitted and scored on again (its generalization)


def report_cascade(model, output_dir: str | None, budget_ratio: float = 0.8, data=None,
                   wall_time_batch: int = WALL_TIME_BATCH, splits: int = SPLITS) -> dict:
    """Fit, evaluate, time and print the demo cascade; write cascade.json and the plot into ``output_dir``.

    Args:
        data: (images [N, 1, 28, 28], labels [N]) instead of the 1,000 held-out digits.
        wall_time_batch: the test-half batch the cascade and its reference are timed on.
        splits: other stratified splits to fit and score the cascade on again (0: none).
    """
    model = model.eval()
    if data is None:
        held_out = digits.digits_datasets()[1]
        data = held_out.images, held_out.targets  # [1000, 1, 28, 28], [1000]
    images, labels = data
    res = study(model, images, labels, model_gmacs(model), budget_ratio=budget_ratio, splits=splits)
    time_study(model, res, images, labels, wall_time_batch)
    print("\nconfidence cascade (held-out digits: thresholds fitted on one stratified half, numbers on the other)")
    print(format_study(res))
    if splits:
        print(format_split_study(res["splits"]))
    print(format_timing(res) + "\n", flush=True)
    if output_dir:
        with atomic_write(os.path.join(output_dir, "cascade.json")) as tmp, open(tmp, "w") as handle:
            json.dump(res, handle, indent=1, default=float)
        results = os.path.join(output_dir, "results.json")
        if os.path.exists(results):
            with open(results) as handle:
                meta = json.load(handle)
            report.plot_accuracy(meta["subnets"], os.path.join(output_dir, "accuracy_vs_gmacs.png"),
                                 meta.get("title", "SuperViT sub-networks"), cascade=res["curve"])
    return res


if __name__ == "__main__":  # re-run on a demo checkpoint: python -m train.demo_cascade CKPT [OUTPUT_DIR]
    import sys

    from supervit.deploy.model_source import load_source

    report_cascade(load_source(sys.argv[1]).model, sys.argv[2] if len(sys.argv) > 2 else None)
