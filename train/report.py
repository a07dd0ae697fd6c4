"""The 12-sub-network results: README-style table, JSON/CSV files, accuracy-vs-GMACs plot, JSONL epoch log."""
from __future__ import annotations

import csv
import json
import math
import os

from supervit.models import flops

from supervit.models.subnet import Subnet


def result_rows(metrics: dict, model) -> list[dict]:
    """One row per sub-network (grid-major): img_size, grid, keep_ratio, acc1, acc5, gmacs."""
    rows = []
    for size, ratio in model.subnets():
        key = Subnet(size, ratio).key
        grid = size // model.patch_size
        rows.append({"img_size": size, "grid": f"{grid}x{grid}", "keep_ratio": ratio,
                     "acc1": metrics.get(f"{key}_acc1"), "acc5": metrics.get(f"{key}_acc5"),
                     "gmacs": flops(model, size, ratio)})
    return rows


def _gmacs(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.4f}"


def _acc(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def format_table(rows: list[dict], title: str = "top-1 % (GMACs)") -> str:
    """Markdown table: rows = token grid (image side), columns = keep rate, cells = 'acc1 (GMACs)'."""
    ratios = sorted({r["keep_ratio"] for r in rows})
    sizes = sorted({r["img_size"] for r in rows})
    cell = {(r["img_size"], r["keep_ratio"]): r for r in rows}
    lines = [f"| {title} | " + " | ".join(f"keep {k:g}" for k in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for size in sizes:
        grid = cell[(size, ratios[0])]["grid"]
        values = [f"{_acc(cell[(size, k)]['acc1'])} ({_gmacs(cell[(size, k)]['gmacs'])})" for k in ratios]
        lines.append(f"| {grid} ({size} px) | " + " | ".join(values) + " |")
    return "\n".join(lines)


def write_results(output_dir: str, rows: list[dict], meta: dict) -> dict:
    """results.json (rows + meta), results.csv (rows) and accuracy_vs_gmacs.png in ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"json": os.path.join(output_dir, "results.json"), "csv": os.path.join(output_dir, "results.csv"),
             "png": os.path.join(output_dir, "accuracy_vs_gmacs.png")}
    with open(paths["json"], "w") as handle:
        json.dump({**meta, "subnets": rows}, handle, indent=2)
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_accuracy(rows, paths["png"], meta.get("title", "SuperViT sub-networks"))
    return paths


def plot_accuracy(rows: list[dict], path: str, title: str, cascade: list[dict] | None = None):
    """Top-1 vs GMACs, one line per token grid through its keep rates (labelled); ``cascade``: optional points
    {"gmacs", "acc1"} of fitted confidence cascades (test half), drawn as a dashed curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for size in sorted({r["img_size"] for r in rows}):
        group = sorted((r for r in rows if r["img_size"] == size and r["acc1"] is not None), key=lambda r: r["gmacs"])
        if not group:  # not evaluated (--subnets)
            continue
        ax.plot([r["gmacs"] for r in group], [r["acc1"] for r in group], marker="o",
                label=f"{group[0]['grid']} tokens ({size} px)")
        for r in group:
            ax.annotate(f"{r['keep_ratio']:g}", (r["gmacs"], r["acc1"]), textcoords="offset points", xytext=(4, -10),
                        fontsize=7)
    if cascade:
        curve = sorted(cascade, key=lambda c: c["gmacs"])
        ax.plot([c["gmacs"] for c in curve], [c["acc1"] for c in curve], "k--", marker="x",
                label="confidence cascade (test half)")
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class JsonlLog:
    """Append one JSON object per line to ``path`` (nothing when ``path`` is None)."""

    def __init__(self, path: str | None):
        self.path = path
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, record: dict):
        if self.path:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record, default=float) + "\n")
