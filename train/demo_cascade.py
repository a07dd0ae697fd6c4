"""The demo's confidence cascade: fitted on one stratified half of the 1,000 held-out digits, reported on the other.

After the demo trains, this prints the cascade's top-1 and mean GMACs beside the static table, its wall time at
batch 256 against the reference sub-network, writes ``cascade.json`` and redraws ``accuracy_vs_gmacs.png`` with the
cascade's curve over the static points.
"""
from __future__ import annotations

import json
import os

from supervit.deploy import cascade as casc
from supervit.deploy.cascade_study import format_study, study, time_against_static
from supervit.models import flops

from . import digits, report

WALL_TIME_BATCH = 256


def report_cascade(model, output_dir: str | None, budget_ratio: float = 0.8, data=None,
                   wall_time_batch: int = WALL_TIME_BATCH) -> dict:
    """Fit, evaluate, time and print the demo cascade; write cascade.json and the plot into ``output_dir``.

    Args:
        data: (images [N, 1, 28, 28], labels [N]) instead of the 1,000 held-out digits.
        wall_time_batch: the test-half batch the cascade and its reference are timed on.
    """
    model = model.eval()
    device = next(model.parameters()).device
    if data is None:
        held_out = digits.digits_datasets()[1]
        data = held_out.images, held_out.targets  # [1000, 1, 28, 28], [1000]
    images, labels = data
    gmacs = {sub: flops(model, *sub) for sub in model.subnets()}
    res = study(model, images.to(device), labels.to(device), gmacs, budget_ratio=budget_ratio)
    _, test = casc.stratified_halves(labels, res["halves"]["seed"])
    ref = res["reference"]
    fitted = casc.Cascade(res["cascade"]["stages"], res["cascade"]["thresholds"], res["cascade"]["confidence"])
    batch = images[test[:wall_time_batch]].to(device)
    res["timing"] = time_against_static(model, fitted, (ref["img_size"], ref["keep_ratio"]), batch)
    t = res["timing"]
    print("\nconfidence cascade (held-out digits: thresholds fitted on one stratified half, numbers on the other)")
    print(format_study(res))
    print(f"wall time at batch {batch.shape[0]}: cascade {t['cascade']['median_ms']:.1f} ms vs "
          f"({ref['img_size']}, {ref['keep_ratio']:g}) {t['static']['median_ms']:.1f} ms = {t['ratio']:.2f}x "
          f"(load {t['conditions']['load_before']} -> {t['conditions']['load_after']}"
          f"{', noisy' if t['cascade']['noisy'] or t['static']['noisy'] else ''})\n", flush=True)
    if output_dir:
        with open(os.path.join(output_dir, "cascade.json"), "w") as handle:
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
