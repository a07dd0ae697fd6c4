"""PNG plots of operating points (matplotlib, Agg backend): accuracy vs latency and vs GMACs, Pareto fronts drawn."""
from __future__ import annotations

from .choose import pareto_front
from ..files import atomic_write


def _panel(ax, points, cost, xlabel, chosen=None, budget=None, cascade=None):
    xs, ys = [p[cost] for p in points], [p["acc1"] for p in points]
    ax.scatter(xs, ys, color="tab:gray", zorder=2, label="sub-networks")
    for p in points:
        ax.annotate(f"{p['img_size']}:{p['keep_ratio']:g}", (p[cost], p["acc1"]), textcoords="offset points",
                    xytext=(4, -9), fontsize=7)
    front = pareto_front(points, cost)
    ax.step([p[cost] for p in front], [p["acc1"] for p in front], where="post", color="tab:blue", zorder=3,
            label="Pareto front")
    ax.scatter([p[cost] for p in front], [p["acc1"] for p in front], color="tab:blue", zorder=4)
    if cascade:
        curve = sorted(cascade, key=lambda c: c[cost])
        ax.plot([c[cost] for c in curve], [c["acc1"] for c in curve], color="tab:orange", marker=".", zorder=5,
                label="confidence cascade")
    if chosen is not None:
        ax.scatter([chosen[cost]], [chosen["acc1"]], s=160, facecolors="none", edgecolors="tab:red", linewidths=2,
                   zorder=6, label=f"chosen {chosen['img_size']}:{chosen['keep_ratio']:g}")
    if budget is not None:
        ax.axvline(budget, color="tab:red", linestyle="--", linewidth=1, label="budget")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plot_operating_points(points: list[dict], path: str, title: str, chosen: dict | None = None,
                          budget: tuple[str, float] | None = None, cascade: list[dict] | None = None) -> str:
    """Write ``path`` (PNG): accuracy vs measured latency (when profiled) and vs GMACs, Pareto fronts drawn.

    Args:
        points: operating points (``choose.operating_points``).
        chosen: the selected point, circled.
        budget: (``"latency_ms"`` or ``"gmacs"``, value) drawn as a vertical line on its panel.
        cascade: cascade results ({"acc1", "gmacs"[, "latency_ms"]}) drawn as a curve on the panels they cover.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("gmacs", "GMACs per image")]
    if all(p["latency_ms"] is not None for p in points):
        panels.insert(0, ("latency_ms", "measured latency per batch (ms)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.4), dpi=120, squeeze=False)
    for ax, (cost, xlabel) in zip(axes[0], panels):
        curve = [c for c in cascade if c.get(cost) is not None] if cascade else None
        _panel(ax, points, cost, xlabel, chosen, budget[1] if budget and budget[0] == cost else None, curve)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_write(path, make_folder=True) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path


def plot_cascade(study: dict, path: str, title: str) -> str:
    """Write ``path`` (PNG): test-half top-1 vs GMACs of the static sub-networks with the cascade curve over them."""
    points = [{"img_size": p["img_size"], "keep_ratio": p["keep_ratio"], "acc1": p["test_acc1"],
               "gmacs": p["gmacs"], "latency_ms": None} for p in study["static"]]
    return plot_operating_points(points, path, title, cascade=study["curve"])
