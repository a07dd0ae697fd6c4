"""Result-writing and set-up helpers shared by the benchmarks; timing is ``supervit.deploy.timing``'s.

Methodology: warm-up calls, interleaved rounds, synchronize before reading the clock, median and spread
(min..max, IQR, a ``noisy`` flag) reported; every row carries the conditions it was measured under.
Speed claims are ratios of rows measured in one run on one machine.
"""
from __future__ import annotations

import contextlib
import csv
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
from supervit.deploy.timing import (conditions, device_name, load_average, measure, summarize, sync,  # noqa: E402,F401
                                    time_interleaved)


@contextlib.contextmanager
def forced_backend(name: str | None):
    """SUPERVIT_BACKEND=name inside the block (None or 'auto': the dispatcher's own choice)."""
    old = os.environ.pop("SUPERVIT_BACKEND", None)
    if name and name != "auto":
        os.environ["SUPERVIT_BACKEND"] = name
    try:
        yield
    finally:
        os.environ.pop("SUPERVIT_BACKEND", None)
        if old is not None:
            os.environ["SUPERVIT_BACKEND"] = old


def cls_row_score(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The baseline our attention+score is measured against: the CLS row computed apart from the attention,
    head-mean softmax(q0 k^T * scale) at the patch keys, [B, N-1] from q, k [B, H, N, D]."""
    return torch.softmax((q[:, :, :1] @ k.transpose(-2, -1)) * scale, dim=-1)[:, :, 0, 1:].mean(dim=1)


def write_rows(rows: list[dict], folder: str, stem: str, columns: list[str] | None = None) -> tuple[str, str]:
    """Write ``rows`` as ``folder/stem.csv`` and a markdown table ``folder/stem.md``; returns both paths."""
    os.makedirs(folder, exist_ok=True)
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    csv_path, md_path = os.path.join(folder, stem + ".csv"), os.path.join(folder, stem + ".md")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(md_path, "w") as f:
        f.write(markdown_table(rows, columns))
    return csv_path, md_path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
