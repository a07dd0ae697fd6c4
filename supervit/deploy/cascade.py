"""Confidence cascade of sub-networks: a cheap one on the whole batch, the uncertain samples to the next one.

Stage i runs on the samples still undecided, gathered into a smaller batch (real compute saved, not masking); a
sample leaves at stage i when its confidence reaches ``thresholds[i]``; the last stage takes every sample left.
Thresholds are fitted on a calibration set to a mean-GMACs (or mean-latency) budget and the result evaluated on a
disjoint test set. Confidence is the max softmax probability or the margin between the two largest (which one is
chosen by measurement: the fit tries both).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..models.subnet import Subnet
from . import DeployError
from .options import CONFIDENCES, STAGE_POOLS


def confidence(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """[B] confidence of logits [B, K]: max softmax probability, or top-1 minus top-2 probability."""
    probs = logits.float().softmax(dim=-1)
    if kind == "max_softmax":
        return probs.max(dim=-1).values
    if kind == "margin":
        top2 = probs.topk(2, dim=-1).values  # [B, 2]
        return top2[:, 0] - top2[:, 1]
    raise DeployError(f"confidence must be one of {list(CONFIDENCES)}, got {kind!r}")


@dataclass
class Cascade:
    """Stages (img_size, keep_ratio), ascending cost, and the exit thresholds of all stages but the last."""

    stages: list[tuple[int, float]]
    thresholds: list[float]
    confidence: str = "max_softmax"
    fit: dict = field(default_factory=dict)  # what the fitting measured (calibration numbers, budget)

    def __post_init__(self):
        self.stages = [Subnet(int(s), float(r)) for s, r in self.stages]
        self.thresholds = [float(t) for t in self.thresholds]
        if not self.stages or len(self.thresholds) != len(self.stages) - 1:
            raise DeployError(f"a cascade of {len(self.stages)} stage(s) needs {max(len(self.stages) - 1, 0)} "
                              f"threshold(s), got {self.thresholds}")
        confidence(torch.zeros(1, 2), self.confidence)  # validates the name

    @torch.inference_mode()
    def __call__(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, K], exit stage [B] int64) of ``images`` [B, C, H, W]."""
        active = torch.arange(images.shape[0], device=images.device)  # original index of each pending sample
        x, out, exits = images, None, torch.full_like(active, len(self.stages) - 1)
        for i, (size, ratio) in enumerate(self.stages):
            logits = model(x, img_size=size, keep_ratio=ratio)  # [n_pending, K]
            if out is None:
                out = logits.new_empty(images.shape[0], logits.shape[-1])
            if i == len(self.stages) - 1:
                out[active] = logits
                break
            done = confidence(logits, self.confidence) >= self.thresholds[i]
            out[active[done]] = logits[done]
            exits[active[done]] = i
            active, x = active[~done], x[~done]  # the undecided samples, gathered into a smaller batch
            if active.numel() == 0:
                break
        return out, exits

    def to_dict(self) -> dict:
        return asdict(self)


def stage_outputs(model: nn.Module, images: torch.Tensor, subnets, batch_size: int = 256,
                  progress: bool = False) -> dict:
    """{(s, r): logits [N, K] float32} of every sub-network in ``subnets`` on ``images`` (CPU tensors)."""
    from tqdm import tqdm

    outs = {sub: [] for sub in subnets}
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in tqdm(range(0, images.shape[0], batch_size), desc="sub-network outputs", disable=not progress,
                          leave=False):
            batch = images[start:start + batch_size].to(device)
            for sub in subnets:
                outs[sub].append(model(batch, img_size=sub[0], keep_ratio=sub[1]).float().cpu())
    return {sub: torch.cat(v) for sub, v in outs.items()}


def _exit_costs(conf: list[np.ndarray], thresholds: np.ndarray, costs: list[float], n: int):
    """For threshold rows [T, S-1]: (exit stage [T, N], mean cost [T]) of a chain with confidences conf[i] [N]."""
    n_rows = thresholds.shape[0]
    exit_stage = np.full((n_rows, n), len(conf), dtype=np.int64)
    for i in reversed(range(len(conf))):  # the first stage whose confidence reaches its threshold wins
        exit_stage = np.where(conf[i][None, :] >= thresholds[:, i:i + 1], i, exit_stage)
    cumulative = np.cumsum(costs)
    return exit_stage, cumulative[exit_stage].mean(axis=1)


def _per_sample(outputs: dict, labels: torch.Tensor, kind: str) -> tuple[dict, dict]:
    """({sub-network: correct [N] bool}, {sub-network: confidence [N]}) of precomputed ``outputs``."""
    y = labels.numpy()
    return ({s: o.argmax(-1).numpy() == y for s, o in outputs.items()},
            {s: confidence(o, kind).numpy() for s, o in outputs.items()})


def _simulate(correct: dict, conf: dict, stages, grid: np.ndarray, costs: dict) -> dict:
    """``simulate`` from the per-sample tables of ``_per_sample`` and a threshold grid [T, S-1]."""
    exit_stage, mean_cost = _exit_costs([conf[s] for s in stages[:-1]], grid, [costs[s] for s in stages],
                                        len(correct[stages[0]]))
    correct = np.stack([correct[s] for s in stages])  # [S, N]
    acc = 100.0 * np.take_along_axis(correct, exit_stage, axis=0).mean(axis=1)  # [T]
    fractions = np.stack([(exit_stage == i).mean(axis=1) for i in range(len(stages))], axis=1)  # [T, S]
    return {"acc1": acc, "cost": mean_cost, "exit_fractions": fractions,
            "thresholds": grid}


def simulate(outputs: dict, labels: torch.Tensor, stages, thresholds_grid, kind: str, costs: dict) -> dict:
    """Accuracy and mean cost of the chain ``stages`` for each row of ``thresholds_grid`` [T, S-1], from
    precomputed ``outputs`` (what ``Cascade.__call__`` would return, sample by sample)."""
    correct, conf = _per_sample({s: outputs[s] for s in stages}, labels, kind)
    grid = np.asarray(thresholds_grid, dtype=np.float64).reshape(len(thresholds_grid), len(stages) - 1)  # [T, S-1]
    return _simulate(correct, conf, list(stages), grid, costs)


def _threshold_values(conf: np.ndarray, points: int) -> np.ndarray:
    """Candidate thresholds: quantiles of the calibration confidences, plus 'nobody exits' (inf)."""
    return np.unique(np.concatenate([np.quantile(conf, np.linspace(0, 1, points)), [np.inf]]))


def calibration_pareto(outputs: dict, labels: torch.Tensor, costs: dict) -> list:
    """The sub-networks on the accuracy-vs-cost Pareto front of the calibration set, ascending cost."""
    acc = {s: (o.argmax(-1) == labels).double().mean().item() for s, o in outputs.items()}
    return sorted((s for s in outputs if not any(
        costs[t] <= costs[s] and acc[t] >= acc[s] and (costs[t] < costs[s] or acc[t] > acc[s]) for t in outputs)),
        key=lambda s: costs[s])


def fit_cascade(outputs: dict, labels: torch.Tensor, costs: dict, budget: float, max_stages: int = 2,
                kinds=CONFIDENCES, grid_points: int = 41, cost_name: str = "gmacs",
                stage_pool: str = "all") -> Cascade:
    """The cascade of highest calibration accuracy whose mean cost per image is within ``budget``.

    Args:
        outputs: {(s, r): logits [N, K]} on the calibration set (``stage_outputs``).
        labels: [N] calibration labels.
        costs: {(s, r): cost per image} (GMACs, or ms per image from a profile).
        budget: mean cost per image the cascade may spend.
        max_stages: longest chain tried (1 = static sub-networks only); chains ascend in cost.
        kinds: confidence measures tried; the better one on the calibration set is kept.
        grid_points: thresholds tried per stage (quantiles of that stage's confidence).
        stage_pool: ``"all"``: every sub-network may be a stage; ``"pareto"``: only those on the calibration
            accuracy-vs-cost front (fewer candidates). A final stage is worth its accuracy on the samples the
            earlier ones escalate, which a static ranking does not see: the largest sub-network can sit below
            the front on all images and still be the best last stage.
    Ties in accuracy go to the lower mean cost. Raises ``DeployError`` when no chain fits the budget.
    """
    if stage_pool not in STAGE_POOLS:
        raise DeployError(f"stage_pool must be one of {list(STAGE_POOLS)}, got {stage_pool!r}")
    subnets = sorted(outputs, key=lambda s: costs[s])
    if stage_pool == "pareto":
        subnets = calibration_pareto(outputs, labels, costs)
    if budget < costs[subnets[0]]:
        raise DeployError(f"no cascade fits a mean {cost_name} budget of {budget:.4g}: the cheapest sub-network "
                          f"{subnets[0]} alone costs {costs[subnets[0]]:.4g}")
    best, per_kind = None, {}
    for kind in kinds:
        correct, conf = _per_sample({s: outputs[s] for s in subnets}, labels, kind)
        candidates = {s: _threshold_values(conf[s], grid_points) for s in subnets}
        for length in range(1, max_stages + 1):
            for chain in itertools.combinations(subnets, length):
                if costs[chain[0]] > budget:
                    continue
                values = [candidates[s] for s in chain[:-1]]
                grid = np.array(list(itertools.product(*values))) if values else np.zeros((1, 0))
                sim = _simulate(correct, conf, list(chain), grid, costs)
                ok = np.flatnonzero(sim["cost"] <= budget + 1e-12)
                if ok.size == 0:
                    continue
                j = ok[np.lexsort((sim["cost"][ok], -sim["acc1"][ok]))[0]]
                cand = (float(sim["acc1"][j]), -float(sim["cost"][j]), kind, chain, sim["thresholds"][j],
                        sim["exit_fractions"][j])
                if kind not in per_kind or cand[:2] > per_kind[kind][:2]:
                    per_kind[kind] = cand
                if best is None or cand[:2] > best[:2]:
                    best = cand
    acc, neg_cost, kind, chain, thresholds, fractions = best
    summary = {k: {"acc1": v[0], f"mean_{cost_name}": -v[1], "stages": [list(s) for s in v[3]]}
               for k, v in per_kind.items()}
    return Cascade(list(chain), [float(t) for t in thresholds], kind, fit={
        "budget": {cost_name: budget}, "calibration": {"acc1": acc, f"mean_{cost_name}": -neg_cost,
                                                       "num_images": int(labels.shape[0]),
                                                       "exit_fractions": [float(f) for f in fractions]},
        "by_confidence": summary})


def evaluate_cascade(cascade: Cascade, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     gmacs: dict, batch_size: int = 256) -> dict:
    """Top-1, mean GMACs per image and exit fractions of ``cascade`` really run on ``images`` in batches."""
    device = next(model.parameters()).device
    preds, exits = [], []
    for start in range(0, images.shape[0], batch_size):
        logits, stage = cascade(model, images[start:start + batch_size].to(device))
        preds.append(logits.argmax(-1).cpu())
        exits.append(stage.cpu())
    preds, exits = torch.cat(preds), torch.cat(exits)
    cumulative = torch.tensor(np.cumsum([gmacs[s] for s in cascade.stages]), dtype=torch.float64)
    return {"acc1": 100.0 * (preds == labels).double().mean().item(),
            "mean_gmacs": cumulative[exits].mean().item(), "num_images": int(labels.shape[0]),
            "exit_fractions": [(exits == i).double().mean().item() for i in range(len(cascade.stages))]}


def stratified_halves(labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration indices, test indices): each class split in two halves at random (fixed ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    first, second = [], []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        half = members.numel() // 2
        first.append(members[:half])
        second.append(members[half:])
    return torch.sort(torch.cat(first)).values, torch.sort(torch.cat(second)).values
