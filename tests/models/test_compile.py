"""torch.compile(fullgraph=True) over every sub-network: one graph each, through forward's arguments and
set_subnet, and a compiled 4-sub-network training step."""
import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch._dynamo.testing import CompileCounter

from supervit.models import SuperDeiT, compile_model, graphs_needed

TINY = dict(img_sizes=(16, 20, 24, 28), patch_size=4, in_chans=1, embed_dim=16, depth=4, num_heads=2,
            num_classes=10, prune_layers=(1, 2, 3))


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=8):  # PyTorch's default, raised by compile_model
        yield
    torch._dynamo.reset()


def cached_graphs(model) -> int:
    return len(_debug_get_cache_entry_list(type(model).forward.__code__))


def test_every_subnet_through_arguments_one_graph_each(fresh_dynamo):
    torch.manual_seed(0)
    model = SuperDeiT(**TINY).eval()
    counter = CompileCounter()
    compiled = compile_model(model, backend=counter, fullgraph=True)
    assert torch._dynamo.config.recompile_limit == graphs_needed(model) == 24
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for _ in range(2):  # the second round reuses every graph
            for size, ratio in model.subnets():
                assert torch.allclose(compiled(x, img_size=size, keep_ratio=ratio), model(x, size, ratio), atol=1e-6)
    assert counter.frame_count == cached_graphs(model) == 12  # 1 compile + 11 recompiles, no graph break


def test_subnets_through_set_subnet(fresh_dynamo):
    torch.manual_seed(0)
    model = SuperDeiT(**TINY).eval()
    counter = CompileCounter()
    compiled = compile_model(model, backend=counter, fullgraph=True)
    corners = [(16, 0.5), (16, 1.0), (28, 0.7), (28, 1.0)]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for _ in range(2):
            for size, ratio in corners:
                model.set_subnet(size, ratio)
                assert torch.allclose(compiled(x), model(x, size, ratio), atol=1e-6)
    assert counter.frame_count == 4


def test_compiled_training_step_matches_eager(fresh_dynamo):
    torch.manual_seed(0)
    model = SuperDeiT(**TINY).train()
    compiled = compile_model(model, backend="aot_eager", fullgraph=True)  # forward and backward graphs
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    step = [(28, 1.0), (20, 0.5)]

    def grads(run):
        model.zero_grad()
        for size, ratio in step:
            torch.nn.functional.cross_entropy(run(x, img_size=size, keep_ratio=ratio), y).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager = grads(model)
    for _ in range(2):
        got = grads(compiled)
        assert len(got) == len(eager) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, eager))
    assert cached_graphs(model) == 2
