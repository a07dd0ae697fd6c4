"""Wall time of the demo's fitted confidence cascade vs static sub-networks on one test-half batch (CPU or GPU).

Reads the cascade that ``make demo`` fitted (``cascade.json`` beside the checkpoint, written by the deploy cascade
command) or fits one (``--fit``), then times the cascade, its reference sub-network and the test half's best static
sub-network on the same batch of held-out digits (``held_out.pt`` beside the checkpoint), in interleaved rounds.
Writes cascade_wall.{csv,md} under --out.

    python benchmarks/studies/bench_cascade.py --checkpoint runs/demo/last.pth.tar
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: harness
import harness  # noqa: E402
from supervit.deploy import images as image_sets  # noqa: E402
from supervit.deploy.cascade_study import fitted_cascade, study, test_batch  # noqa: E402
from supervit.deploy.source import load_source, model_gmacs  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/demo/last.pth.tar")
    p.add_argument("--tensors", default=None, help="held-out images (default: held_out.pt beside the checkpoint)")
    p.add_argument("--study", default=None, help="cascade.json of the demo run (default: beside the checkpoint)")
    p.add_argument("--fit", action="store_true", help="fit the cascade here instead of reading cascade.json")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="results folder (default: a new folder under runs/bench/)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    model = load_source(args.checkpoint).model.to(device)
    folder = os.path.dirname(os.path.abspath(args.checkpoint))
    images, labels = image_sets.load_tensors(args.tensors or os.path.join(folder, "held_out.pt"), model)
    if args.fit:
        res = study(model, images, labels, model_gmacs(model))
    else:
        path = args.study or os.path.join(folder, "cascade.json")
        with open(path) as handle:
            res = json.load(handle)
    fitted = fitted_cascade(res)
    x = test_batch(res, images, labels, args.batch, device)
    statics = {"reference": res["reference"], "best_on_test": res["best_on_test"]}
    candidates = {"cascade": lambda: fitted(model, x)}
    for name, p_ in statics.items():
        candidates[name] = lambda p_=p_: model(x, img_size=p_["img_size"], keep_ratio=p_["keep_ratio"])
    with torch.inference_mode():
        stats, cond = harness.measure(candidates, device, dtype=x.dtype, batch=x.shape[0], mode="eager",
                                      rounds=args.rounds, warmup=2, progress=True)
    stages = " -> ".join(f"{s}:{r:g}" for s, r in fitted.stages)
    rows = []
    for name, s in stats.items():
        what = stages if name == "cascade" else f"{statics[name]['img_size']}:{statics[name]['keep_ratio']:g}"
        rows.append({"candidate": name, "subnets": what, **{k: s[k] for k in ("median_ms", "min_ms", "max_ms",
                     "rel_spread", "noisy", "rounds")},
                     "cascade_ratio": stats["cascade"]["median_ms"] / s["median_ms"], **cond})
    out = harness.run_folder(device, args.out)
    cols = ["candidate", "subnets", "median_ms", "min_ms", "max_ms", "rel_spread", "noisy", "rounds",
            "cascade_ratio", "batch", "threads", "load_before", "load_after", "device", "torch", "command"]
    print(harness.markdown_table(rows, cols))
    print("wrote", *harness.write_rows(rows, out, "cascade_wall", cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
