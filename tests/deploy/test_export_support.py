"""Helpers of the export tests (this module holds no test): the demo network, eager expectations, and running
exports in a process where ``supervit`` cannot be imported."""
import json
import os
import subprocess
import sys

import torch

from supervit.deploy.export import SubnetModule

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOLERANCE = 1e-4  # max abs logits difference, fp32
BATCHES = (1, 7)


def demo_network(seed: int = 0):
    """The network ``make demo`` trains (LV-ViT body, 1-channel 28 px digits), with random weights."""
    from train.digits import DEMO_MODEL
    from train.recipes import LVViTRecipe

    torch.manual_seed(seed)
    return LVViTRecipe.model_class(**{**DEMO_MODEL, **LVViTRecipe(None).demo_model_extra()}).eval()


def model_by_name(name: str, seed: int = 0):
    if name == "demo":
        return demo_network(seed)
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name).eval()


def example_batches(model, batches=BATCHES, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    side = model.img_sizes[-1]
    return [torch.randn(b, model.in_chans, side, side, generator=g) for b in batches]


# Two runtimes may order two tokens differently only when their eager scores differ by rounding: at most this
# fraction of the row's largest score (a near-tie seen in ONNX Runtime: 1.9e-9 on scores of 0.0136, two fp32 ulps).
RANK_TIE_TOLERANCE = 1e-5


class Expected(list):
    """Eager (logits, kept indices...) of one input, with ``scores``: the CLS-attention score [B, N-1] that each
    pruning block ranked."""
    scores: list


def eager_outputs(model, img_size, keep_ratio, inputs) -> list:
    """``Expected`` (logits, kept indices...) of the sub-network in PyTorch eager for each input."""
    from supervit.models import layers

    subnet = SubnetModule(model, img_size, keep_ratio, with_kept=True)
    prune, recorded = layers.prune_op, []

    def recording_prune(x, score, ratio):
        recorded.append(score.clone())
        return prune(x, score, ratio)

    results = []
    layers.prune_op = recording_prune
    try:
        with torch.no_grad():
            for x in inputs:
                recorded.clear()
                expected = Expected(subnet(x))
                expected.scores = list(recorded)
                results.append(expected)
    finally:
        layers.prune_op = prune
    return results


def assert_matches(got, expected, where: str) -> None:
    """Logits within TOLERANCE and the kept indices equal; where the eager scores carry a rounding-level near-tie,
    the two tokens of that tie may come in either order (every differing rank must pick a token whose eager score
    equals, within RANK_TIE_TOLERANCE of the row maximum, the score of the token eager kept at that rank)."""
    assert len(got) == len(expected), f"{where}: {len(got)} outputs, expected {len(expected)}"
    diff = (got[0] - expected[0]).abs().max().item()
    assert diff <= TOLERANCE, f"{where}: max |logits - eager| = {diff:.3g} > {TOLERANCE}"
    scores = getattr(expected, "scores", None)
    for i, (g, e) in enumerate(zip(got[1:], expected[1:])):
        assert g.dtype == torch.int64 and g.shape == e.shape, f"{where}: kept indices of pruning block {i}: {g.shape}"
        if torch.equal(g, e):
            continue
        assert scores is not None, f"{where}: kept indices of pruning block {i} differ"
        score = scores[i]  # [B, N-1]
        for b, rank in (g != e).nonzero().tolist():
            tol = RANK_TIE_TOLERANCE * score[b].abs().max().item()
            gap = abs(score[b, g[b, rank]].item() - score[b, e[b, rank]].item())
            assert gap <= tol, (f"{where}: pruning block {i}, sample {b}, rank {rank}: kept token {g[b, rank].item()}"
                                f" where eager kept {e[b, rank].item()}; their scores differ by {gap:.3g} > {tol:.3g}")


# Runs in a fresh interpreter: the repository is not on sys.path and every import of supervit fails.
_WITHOUT_SUPERVIT = r"""
import importlib.abc, json, os, sys
class _NoSupervit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "supervit" or name.startswith("supervit."):
            raise ImportError("supervit is blocked in this process")
sys.meta_path.insert(0, _NoSupervit())
root = sys.argv[2]
sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != root]
import torch
job = json.loads(sys.argv[1])
inputs = torch.load(job["inputs"], weights_only=True)
results = {}
for path, fmt in job["files"]:
    run = torch.export.load(path).module() if fmt == "pt2" else torch._inductor.aoti_load_package(path)
    outputs = []
    for x in inputs[path]:
        with torch.no_grad():
            out = run(x)
        outputs.append(list(out) if isinstance(out, (list, tuple)) else [out])
    results[path] = outputs
try:
    import supervit
    importable = True
except ImportError:
    importable = False
torch.save(results, job["outputs"])
print(json.dumps({"supervit_importable": importable, "supervit_loaded": "supervit" in sys.modules}))
"""


def run_without_supervit(files: list, inputs: dict, workdir) -> dict:
    """{path: [outputs per input]} from loading each (path, "pt2" | "aoti") in one process without supervit.

    Args:
        files: [(path, "pt2" | "aoti")].
        inputs: {path: [input batches]}.
    """
    job = {"files": [list(f) for f in files], "inputs": os.path.join(workdir, "inputs.pt"),
           "outputs": os.path.join(workdir, "outputs.pt")}
    torch.save(inputs, job["inputs"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_SUPERVIT, json.dumps(job), ROOT], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == {"supervit_importable": False, "supervit_loaded": False}, status
    return torch.load(job["outputs"], weights_only=True)
