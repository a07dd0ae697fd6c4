"""Fit a confidence cascade on one half of a labelled set and report it on the other, beside the static table.

What ``python -m supervit.deploy cascade`` runs (``make demo`` runs it on the held-out digits). The reference static
sub-network is the most accurate one on the calibration half (ties: the cheaper); the default budget is a fraction of
its GMACs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import timing
from . import DeployError
from . import cascade as casc


def _acc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(-1) == labels).double().mean().item()


def study(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, gmacs: dict, budget_ratio: float = 0.8,
          budget: float | None = None, costs: dict | None = None, cost_name: str = "gmacs", seed: int = 0,
          max_stages: int = 2, confidences=casc.CONFIDENCES, stage_pool: str = "all", batch_size: int = 256,
          curve_ratios=(0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), splits: int = 0, progress: bool = False) -> dict:
    """Static sub-networks and the fitted cascade on two fixed stratified halves of (images, labels).

    Args:
        gmacs: {(s, r): GMACs per image} of the sub-networks to consider (stages and static points).
        budget_ratio: the mean-cost budget as a fraction of the reference static sub-network's cost.
        budget: an absolute mean-cost budget instead (in ``cost_name`` units).
        costs: per-image cost to fit against ({(s, r): ms per image} for a latency budget); GMACs by default.
        curve_ratios: budget fractions whose fitted cascades form the curve drawn over the static points.
        splits: also fit and score the cascade on this many other splits (``split_study``; GMACs budgets only).
    Returns a dict: ``static`` rows (cal/test top-1, GMACs), ``reference``, ``budget``, ``cascade`` (the fit),
    ``test`` (the cascade really run on the test half), ``curve`` (test top-1 / mean GMACs per budget fraction),
    and ``splits`` when asked.
    """
    costs = costs or gmacs
    if labels.shape[0] < 4:
        raise DeployError(f"the labelled set has {labels.shape[0]} images; a cascade study needs at least 4")
    cal, test = casc.stratified_halves(labels, seed)
    subnets = list(gmacs)
    outputs = casc.stage_outputs(model, images, subnets, batch_size, progress)  # every image, once
    out_cal, out_test = ({s: o[half] for s, o in outputs.items()} for half in (cal, test))
    y_cal, y_test = labels[cal], labels[test]
    static = [{"img_size": s, "keep_ratio": r, "gmacs": gmacs[(s, r)], "cost": costs[(s, r)],
               "cal_acc1": _acc(out_cal[(s, r)], y_cal), "test_acc1": _acc(out_test[(s, r)], y_test)}
              for s, r in subnets]
    reference = max(static, key=lambda p: (p["cal_acc1"], -p["cost"]))
    limit = budget if budget is not None else budget_ratio * reference["cost"]
    cheapest = min(static, key=lambda p: p["cost"])
    if limit < cheapest["cost"]:
        raise DeployError(f"the budget {limit:.4g} {cost_name} per image (budget ratio {budget_ratio:g} of the "
                          f"reference ({reference['img_size']}, {reference['keep_ratio']:g})) is below the cheapest "
                          f"sub-network ({cheapest['img_size']}, {cheapest['keep_ratio']:g}) at "
                          f"{cheapest['cost']:.4g}; raise --budget-ratio or --budget-gmacs")
    fitted = casc.fit_cascade(out_cal, y_cal, costs, limit, max_stages, confidences, cost_name=cost_name,
                              stage_pool=stage_pool)
    result = casc.evaluate_cascade(fitted, model, images[test], y_test, gmacs, batch_size)
    if costs is not gmacs:  # the fitted cost on the test half, from its exit fractions
        spent = [sum(costs[s] for s in fitted.stages[:i + 1]) for i in range(len(fitted.stages))]
        result[f"mean_{cost_name}"] = sum(f * c for f, c in zip(result["exit_fractions"], spent))
    curve = []
    for ratio in curve_ratios:
        try:
            fit = casc.fit_cascade(out_cal, y_cal, costs, ratio * reference["cost"], max_stages, confidences,
                                   cost_name=cost_name, stage_pool=stage_pool)
        except DeployError:
            continue
        sim = casc.simulate(out_test, y_test, fit.stages, [fit.thresholds], fit.confidence, gmacs)
        curve.append({"budget_ratio": ratio, "acc1": float(sim["acc1"][0]), "gmacs": float(sim["cost"][0]),
                      "stages": [list(s) for s in fit.stages], "thresholds": fit.thresholds})
    best_test = max(static, key=lambda p: (p["test_acc1"], -p["gmacs"]))
    res = {"static": static, "reference": reference, "best_on_test": best_test, "budget": {cost_name: limit},
           "cascade": fitted.to_dict(), "test": result, "curve": curve,
           "halves": {"calibration": int(cal.numel()), "test": int(test.numel()), "seed": seed}}
    if splits:
        if costs is not gmacs:
            raise DeployError("re-drawn splits (--splits) are fitted to GMACs budgets only; drop --budget-ms")
        res["splits"] = split_study(outputs, labels, gmacs, range(seed + 1, seed + 1 + splits), budget_ratio,
                                    budget, max_stages, confidences, stage_pool)
    return res


def split_study(outputs: dict, labels: torch.Tensor, gmacs: dict, seeds, budget_ratio: float = 0.8,
                budget: float | None = None, max_stages: int = 2, confidences=casc.CONFIDENCES,
                stage_pool: str = "all", tolerance: float = 0.5, max_gmacs_ratio: float = 0.8) -> dict:
    """How the fitted cascade generalizes: fit and evaluate it again on the stratified halves of other seeds.

    On every split the reference is the most accurate sub-network on its calibration half and the budget
    ``budget_ratio`` x its GMACs (or the fixed ``budget``), as ``study`` does. Each row compares the cascade's
    test-half top-1 with that reference and with the best static sub-network on the test half (the best of 12 on the
    very images scored: an optimistic yardstick, since it is picked after seeing them). ``summary`` has the mean,
    median and the 10th/90th percentiles of both gaps (over the splits where some cascade fits the budget;
    ``unfit_seeds`` lists the others) and how many splits reach ``tolerance`` points of the best on the test half at
    no more than ``max_gmacs_ratio`` x its GMACs.

    Args:
        outputs: {(s, r): logits [N, K]} of every image (``cascade.stage_outputs``).
        labels: [N] labels.
        seeds: split seeds (``cascade.stratified_halves``).
    """
    rows, unfit = [], []
    cheapest = min(gmacs[s] for s in outputs)
    for seed in seeds:
        cal, test = casc.stratified_halves(labels, seed)
        y_cal, y_test = labels[cal], labels[test]
        cal_acc = {s: _acc(o[cal], y_cal) for s, o in outputs.items()}
        test_acc = {s: _acc(o[test], y_test) for s, o in outputs.items()}
        reference = max(outputs, key=lambda s: (cal_acc[s], -gmacs[s]))
        best = max(outputs, key=lambda s: (test_acc[s], -gmacs[s]))
        limit = budget if budget is not None else budget_ratio * gmacs[reference]
        if limit < cheapest:  # not even the cheapest sub-network fits on this split's budget
            unfit.append(seed)
            continue
        fit = casc.fit_cascade({s: o[cal] for s, o in outputs.items()}, y_cal, gmacs, limit, max_stages,
                               confidences, stage_pool=stage_pool)
        sim = casc.simulate({s: o[test] for s, o in outputs.items()}, y_test, fit.stages, [fit.thresholds],
                            fit.confidence, gmacs)
        acc, spent = float(sim["acc1"][0]), float(sim["cost"][0])
        rows.append({"seed": seed, "stages": [list(s) for s in fit.stages], "acc1": acc, "mean_gmacs": spent,
                     "reference": list(reference), "reference_acc1": test_acc[reference],
                     "best_on_test": list(best), "best_acc1": test_acc[best],
                     "gap_to_reference": acc - test_acc[reference], "gap_to_best": acc - test_acc[best],
                     "reference_gap_to_best": test_acc[reference] - test_acc[best],
                     "gmacs_ratio_to_best": spent / gmacs[best]})
    if not rows:
        raise DeployError(f"no cascade fits the budget on any of the splits {list(seeds)}; raise the budget")
    summary = {"splits": len(rows), "unfit_seeds": unfit, "tolerance": tolerance, "max_gmacs_ratio": max_gmacs_ratio,
               "within_tolerance_of_best": sum(r["gap_to_best"] >= -tolerance - 1e-9
                                               and r["gmacs_ratio_to_best"] <= max_gmacs_ratio for r in rows)}
    for key in ("gap_to_reference", "gap_to_best", "reference_gap_to_best", "gmacs_ratio_to_best"):
        values = np.array([r[key] for r in rows])
        summary[key] = {"mean": float(values.mean()), "median": float(np.median(values)),
                        "p10": float(np.quantile(values, 0.1)), "p90": float(np.quantile(values, 0.9))}
    return {"rows": rows, "summary": summary}


def format_split_study(splits: dict) -> str:
    """Three lines: the cascade's gaps over the re-drawn splits."""
    sm = splits["summary"]

    def line(key):
        return f"mean {sm[key]['mean']:+.2f}, median {sm[key]['median']:+.2f}, 10-90% {sm[key]['p10']:+.2f}.." \
               f"{sm[key]['p90']:+.2f}"

    return (f"over {sm['splits']} other stratified splits (fitted and scored again on each): top-1 gap to the "
            f"reference {line('gap_to_reference')} points;\n  to the best static on the test half (picked after "
            f"seeing it) {line('gap_to_best')} points (the reference's own: {line('reference_gap_to_best')});\n  "
            f"within {sm['tolerance']:g} of it at <= {sm['max_gmacs_ratio']:g}x its GMACs on "
            f"{sm['within_tolerance_of_best']}/{sm['splits']} splits"
            + (f" ({len(sm['unfit_seeds'])} more splits: nothing fits the budget)" if sm["unfit_seeds"] else ""))


def time_against_static(model: nn.Module, cascade: casc.Cascade, static: tuple, images: torch.Tensor,
                        rounds: int = 7, warmup: int = 1) -> dict:
    """Wall time (ms) of the cascade and of the static sub-network on the same batch, interleaved rounds."""
    with torch.inference_mode():
        candidates = {"cascade": lambda: cascade(model, images),
                      "static": lambda: model(images, img_size=static[0], keep_ratio=static[1])}
        stats, cond = timing.measure(candidates, images.device, dtype=images.dtype, batch=images.shape[0],
                                     mode="eager", rounds=rounds, warmup=warmup)
    return {"cascade": stats["cascade"], "static": stats["static"], "conditions": cond,
            "ratio": stats["cascade"]["median_ms"] / stats["static"]["median_ms"]}


def fitted_cascade(res: dict) -> casc.Cascade:
    """The cascade a ``study`` result fitted (its ``"cascade"`` entry as a ``Cascade``)."""
    c = res["cascade"]
    return casc.Cascade(c["stages"], c["thresholds"], c["confidence"])


def test_batch(res: dict, images: torch.Tensor, labels: torch.Tensor, batch: int, device) -> torch.Tensor:
    """The first ``batch`` images of the study's test half, on ``device``."""
    _, test = casc.stratified_halves(labels, res["halves"]["seed"])
    return images[test[:batch]].to(device)


def time_study(model: nn.Module, res: dict, images: torch.Tensor, labels: torch.Tensor, batch: int) -> dict:
    """Wall time of the study's fitted cascade against its reference sub-network on ``batch`` test-half images
    (on the model's device); stored as ``res["timing"]`` and returned."""
    ref = res["reference"]
    x = test_batch(res, images, labels, batch, next(model.parameters()).device)
    res["timing"] = time_against_static(model, fitted_cascade(res), (ref["img_size"], ref["keep_ratio"]), x)
    return res["timing"]


def format_timing(res: dict) -> str:
    """One line: the cascade's and the reference's median wall time, their ratio, the load, a noisy mark."""
    t, ref = res["timing"], res["reference"]
    noisy = ", noisy" if t["cascade"]["noisy"] or t["static"]["noisy"] else ""
    return (f"wall time at batch {t['conditions']['batch']}: cascade {t['cascade']['median_ms']:.1f} ms vs "
            f"({ref['img_size']}, {ref['keep_ratio']:g}) (reference) {t['static']['median_ms']:.1f} ms = "
            f"{t['ratio']:.2f}x (load {t['conditions']['load_before']} -> {t['conditions']['load_after']}{noisy})")


def format_study(res: dict) -> str:
    """The static table (calibration / test top-1) and the cascade's line beside it, as text."""
    ref, best = res["reference"], res["best_on_test"]
    halves = res["halves"]
    lines = [f"static sub-networks (calibration half {halves['calibration']} / test half {halves['test']} images, "
             f"split seed {halves['seed']}):",
             "| img_size | keep | GMACs | top-1 cal % | top-1 test % |", "|---|---|---|---|---|"]
    for p in res["static"]:
        mark = " (reference)" if p is ref else ""
        lines.append(f"| {p['img_size']} | {p['keep_ratio']:g} | {p['gmacs']:.4g} | {p['cal_acc1']:.2f}{mark} | "
                     f"{p['test_acc1']:.2f} |")
    c, t = res["cascade"], res["test"]
    (cost_name, limit), = res["budget"].items()
    stages = " -> ".join(f"({s}, {r:g})" for s, r in c["stages"])
    thr = ", ".join(f"{x:.3f}" for x in c["thresholds"]) or "-"
    lines.append(f"cascade fitted to mean {cost_name} <= {limit:.4g}: {stages}, {c['confidence']} thresholds "
                 f"[{thr}] (calibration top-1 {c['fit']['calibration']['acc1']:.2f}%)")
    other = f" ({t[f'mean_{cost_name}']:.4g} mean {cost_name})" if f"mean_{cost_name}" in t and cost_name != "gmacs" \
        else ""
    lines.append(f"cascade on the test half: top-1 {t['acc1']:.2f}% at {t['mean_gmacs']:.4g} mean GMACs{other}; "
                 "exits " + ", ".join(f"{f:.0%}" for f in t["exit_fractions"]))
    for label, p in (("reference (best on calibration)", ref), ("best static on the test half", best)):
        lines.append(f"  vs {label} ({p['img_size']}, {p['keep_ratio']:g}): {t['acc1'] - p['test_acc1']:+.2f} "
                     f"points top-1 at {t['mean_gmacs'] / p['gmacs']:.2f}x its GMACs")
    by = c["fit"].get("by_confidence", {})
    if by:
        lines.append("  confidence measures on calibration at this budget: " + ", ".join(
            f"{k} {v['acc1']:.2f}%" for k, v in by.items()))
    return "\n".join(lines)
