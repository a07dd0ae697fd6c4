"""Result-writing and set-up helpers shared by the benchmarks; timing is ``supervit.timing``'s.

Methodology: warm-up calls, interleaved rounds, synchronize before reading the clock, median and spread
(min..max, IQR, a ``noisy`` flag) reported; every row carries the conditions it was measured under.
Speed claims are ratios of rows measured in one run on one machine.
"""
from __future__ import annotations

import csv
import os

import torch

from supervit.files import atomic_write
from supervit.kernels.dispatch import forced_backend  # noqa: F401
from supervit.timing import (NOISY_SPREAD, conditions, device_name, load_average, measure,  # noqa: F401
                             paired_ratio, summarize, sync, time_interleaved)


def cls_row_score(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The baseline our attention+score is measured against: the CLS row computed apart from the attention,
    head-mean softmax(q0 k^T * scale) at the patch keys, [B, N-1] from q, k [B, H, N, D]."""
    return torch.softmax((q[:, :, :1] @ k.transpose(-2, -1)) * scale, dim=-1)[:, :, 0, 1:].mean(dim=1)


def run_folder(device, out: str | None = None) -> str:
    """``out`` when given, else a new run folder ``runs/bench/<device>-<UTC time>`` in the repository, so a
    benchmark never writes over the committed ``benchmarks/results`` unless asked to with ``--out``."""
    if out:
        return out
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return os.path.join(root, "runs", "bench", f"{device_name(device)}-{stamp}")


def save_png(fig, path: str) -> None:
    """Lay out matplotlib figure ``fig``, write it to ``path`` (atomically) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def cpu_bench_parser(doc: str, rounds: int, rounds_help: str):
    """The command line of a CPU benchmark: --threads, --rounds, --out (its description: ``doc``'s first paragraph)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"{rounds_help} (default {rounds})")
    parser.add_argument("--out", default=None, help="result folder (default: a new runs/bench/<device>-<time>)")
    return parser


def noisy_note(rows: list[dict]) -> str:
    """One line saying how many rows are flagged noisy (and the load they ran under), or '' when none is."""
    noisy = [r for r in rows if r.get("noisy")]
    if not noisy:
        return ""
    loads = sorted(r["load_before"] for r in noisy if r.get("load_before") is not None)
    load = f"; 1-min load {loads[0]:.2f}..{loads[-1]:.2f}" if loads else ""
    return (f"warning: {len(noisy)} of {len(rows)} rows are noisy (spread IQR/median > {NOISY_SPREAD:.0%}{load}); "
            "rerun them on a quieter machine before trusting their ratios")


def write_rows(rows: list[dict], folder: str, stem: str, columns: list[str] | None = None) -> tuple[str, str]:
    """Write ``rows`` as ``folder/stem.csv`` and a markdown table ``folder/stem.md`` (atomically); returns both
    paths."""
    os.makedirs(folder, exist_ok=True)
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    csv_path, md_path = os.path.join(folder, stem + ".csv"), os.path.join(folder, stem + ".md")
    with atomic_write(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(md_path) as tmp, open(tmp, "w") as f:
        f.write(markdown_table(rows, columns))
    return csv_path, md_path


def report_rows(rows: list[dict], folder: str, stem: str, columns: list[str] | None = None) -> tuple[str, str]:
    """``write_rows``, then print the paths and, when some rows are noisy, the warning of ``noisy_note``."""
    paths = write_rows(rows, folder, stem, columns)
    print("wrote", *paths, flush=True)
    note = noisy_note(rows)
    if note:
        print(note, flush=True)
    return paths


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
