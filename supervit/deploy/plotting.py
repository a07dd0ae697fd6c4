"""PNG plots of operating points (matplotlib, Agg backend): accuracy vs latency and vs GMACs, Pareto fronts drawn,
each point labelled where its label overlaps no other."""
from __future__ import annotations

from ..files import atomic_write
from .selector import pareto_front

# label offsets tried in turn (points): right, left, above, below, then the diagonals and farther out
_OFFSETS = [(5, -3), (-5, -3), (0, 6), (0, -11), (5, 5), (-5, 5), (5, -11), (-5, -11), (12, -3), (-12, -3),
            (0, 14), (0, -19), (12, 10), (-12, 10), (12, -16), (-12, -16), (20, 16), (-20, 16), (20, -22),
            (-20, -22)]


def _annotate(ax, text, x, y, dx, dy):
    """A label at (dx, dy) points from (x, y); one placed farther out gets a thin leader line to its point."""
    far = abs(dx) > 6 or abs(dy) > 11
    return ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                       ha="left" if dx > 0 else "right" if dx < 0 else "center",
                       va="bottom" if dy > 0 else "top" if dy < -5 else "center",
                       arrowprops=dict(arrowstyle="-", lw=0.4, color="0.45", shrinkA=0, shrinkB=3) if far else None)


def _label_points(ax, xs, ys, labels) -> None:
    """Annotate each (x, y) with its label at the first offset where the text overlaps no earlier label, no marker
    and not the legend, inside the axes; where none is free, at the offset that overlaps the fewest."""
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    markers = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]  # display coordinates
    legend = ax.get_legend()
    placed = [legend.get_window_extent(renderer)] if legend is not None else []

    def clashes(box) -> int:
        hits = sum(box.overlaps(other) for other in placed)
        hits += sum(box.x0 - 3 <= mx <= box.x1 + 3 and box.y0 - 3 <= my <= box.y1 + 3 for mx, my in markers)
        return hits + (0 if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) else 100)

    for x, y, text in sorted(zip(xs, ys, labels), key=lambda p: (-p[1], p[0])):  # top first
        best = None
        for dx, dy in _OFFSETS:
            note = _annotate(ax, text, x, y, dx, dy)
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer).expanded(1.05, 1.1)  # the text, not its leader line
            note.remove()
            count = clashes(box)
            if best is None or count < best[0]:
                best = (count, dx, dy, box)
            if count == 0:
                break
        _, dx, dy, box = best
        _annotate(ax, text, x, y, dx, dy)
        placed.append(box)


def _panel(ax, points, cost, xlabel, chosen=None, budget=None, cascade=None, fitted=None):
    xs, ys = [p[cost] for p in points], [p["acc1"] for p in points]
    ax.scatter(xs, ys, color="tab:gray", zorder=2, label="sub-networks")
    front = pareto_front(points, cost)
    ax.step([p[cost] for p in front], [p["acc1"] for p in front], where="post", color="tab:blue", zorder=3,
            label="Pareto front")
    ax.scatter([p[cost] for p in front], [p["acc1"] for p in front], color="tab:blue", zorder=4)
    if cascade:
        curve = sorted(cascade, key=lambda c: c[cost])
        ax.plot([c[cost] for c in curve], [c["acc1"] for c in curve], color="tab:orange", marker=".", zorder=5,
                label="confidence cascade (budget fractions)")
    if fitted is not None:
        ax.scatter([fitted[cost]], [fitted["acc1"]], marker="*", s=220, color="tab:red", edgecolors="black",
                   linewidths=0.6, zorder=7, label=fitted["label"])
    if chosen is not None:
        ax.scatter([chosen[cost]], [chosen["acc1"]], s=160, facecolors="none", edgecolors="tab:red", linewidths=2,
                   zorder=6, label=f"chosen {chosen['img_size']}:{chosen['keep_ratio']:g}")
    if budget is not None:
        ax.axvline(budget, color="tab:red", linestyle="--", linewidth=1, label="budget")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    ax.legend(fontsize=7, loc="best")
    _label_points(ax, xs, ys, [f"{p['img_size']}:{p['keep_ratio']:g}" for p in points])


def plot_operating_points(points: list[dict], path: str, title: str, chosen: dict | None = None,
                          budget: tuple[str, float] | None = None, cascade: list[dict] | None = None,
                          fitted: dict | None = None) -> str:
    """Write ``path`` (PNG): accuracy vs measured latency (when profiled) and vs GMACs, Pareto fronts drawn.

    Args:
        points: operating points (``selector.operating_points``).
        chosen: the selected point, circled.
        budget: (``"latency_ms"`` or ``"gmacs"``, value) drawn as a vertical line on its panel.
        cascade: cascade results ({"acc1", "gmacs"[, "latency_ms"]}) drawn as a curve on the panels they cover.
        fitted: one cascade result ({"acc1", "gmacs", "label"}) drawn as a star.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("gmacs", "GMACs per image")]
    if all(p["latency_ms"] is not None for p in points):
        panels.insert(0, ("latency_ms", "measured latency per batch (ms)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.8), dpi=120, squeeze=False)
    for ax, (cost, xlabel) in zip(axes[0], panels):
        curve = [c for c in cascade if c.get(cost) is not None] if cascade else None
        star = fitted if fitted is not None and fitted.get(cost) is not None else None
        _panel(ax, points, cost, xlabel, chosen, budget[1] if budget and budget[0] == cost else None, curve, star)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_write(path, make_folder=True) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def plot_cascade(study: dict, path: str, title: str) -> str:
    """Write ``path`` (PNG): test-half top-1 vs GMACs of the static sub-networks, the curve of cascades fitted to
    other budget fractions, and the cascade fitted to the study's budget (a star; its budget a dashed line when it is
    a GMACs budget)."""
    points = [{"img_size": p["img_size"], "keep_ratio": p["keep_ratio"], "acc1": p["test_acc1"],
               "gmacs": p["gmacs"], "latency_ms": None} for p in study["static"]]
    test, stages = study["test"], study["cascade"]["stages"]
    fitted = {"acc1": test["acc1"], "gmacs": test["mean_gmacs"],
              "label": "fitted cascade " + " -> ".join(f"{s}:{r:g}" for s, r in stages)}
    budget = ("gmacs", study["budget"]["gmacs"]) if "gmacs" in study["budget"] else None
    return plot_operating_points(points, path, title, budget=budget, cascade=study["curve"], fitted=fitted)
