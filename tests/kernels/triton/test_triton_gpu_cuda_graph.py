"""The Triton kernels inside a captured CUDA graph (``supervit.deploy.cuda_graph``), on a GPU.

Run natively (not under the interpreter); skipped without CUDA (tests/conftest.py) and under TRITON_INTERPRET=1.
"""
import pytest
import torch

from supervit.kernels.triton_launch import INTERPRET

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(INTERPRET, reason="GPU tests run the compiled kernels, not the interpreter")]


@pytest.mark.parametrize("subnet", [(224, 1.0), (224, 0.5), (128, 0.7)])
def test_graph_replay_matches_eager(monkeypatch, subnet):
    """A replay computes what eager computes, for each new input (the graph reads its static input)."""
    import timm

    import supervit  # noqa: F401 - registers the models
    from supervit.deploy.cuda_graph import CudaGraphSubnet

    monkeypatch.delenv("SUPERVIT_BACKEND", raising=False)
    torch.manual_seed(0)
    model = timm.create_model("super_deit_s").cuda().eval().to(torch.bfloat16)
    graph = CudaGraphSubnet(model, *subnet, batch=2, dtype=torch.bfloat16)
    for seed in (1, 2):
        x = torch.randn(2, 3, 224, 224, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        x = x.to(torch.bfloat16)
        with torch.inference_mode():
            eager = model(x, img_size=subnet[0], keep_ratio=subnet[1])
        got = graph(x)
        torch.testing.assert_close(got.float(), eager.float(), atol=3e-2, rtol=3e-2)
    assert not torch.equal(graph(x), graph(torch.zeros_like(x)))
