"""LV-ViT training outputs and MixToken (docs/reference.md)."""
import torch

from supervit.models import SuperLVViT
from supervit.models.super_lvvit import mix_region
from supervit.models.super_vit import scaled_box


def tiny_lvvit():
    torch.manual_seed(0)
    return SuperLVViT(img_sizes=(32, 48, 64), patch_size=8, embed_dim=32, depth=10, num_heads=2, mlp_ratio=3.0,
                      num_classes=5, stem_dim=8)


def test_training_outputs_per_subnet():
    model = tiny_lvvit().train()
    x = torch.randn(4, 3, 64, 64)
    cls, aux, box = model(x, 64, 1.0, mix_box=(1, 2, 5, 7))
    assert cls.shape == (4, 5) and aux.shape == (4, 64, 5) and box == (1, 2, 5, 7)
    assert model(x, 64, 0.5, mix_box=(1, 2, 5, 7)).shape == (4, 5)
    assert model(x, 32, 1.0).shape == (4, 5)
    assert model(x, 64, 1.0)[2] == (0, 0, 0, 0)


def test_eval_output_adds_quarter_of_aux_max():
    model = tiny_lvvit().eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens, _ = model.forward_trace(x, 48, 0.7)
        want = model.head(tokens[:, 0]) + 0.25 * model.aux_head(tokens[:, 1:]).max(1).values
        assert torch.allclose(model(x, 48, 0.7), want, atol=1e-6)


def test_box_rescaled_to_each_grid():
    assert scaled_box((3, 5, 10, 14), 14, 14) == (3, 5, 10, 14)
    assert scaled_box((3, 5, 10, 14), 8, 14) == (1, 2, 5, 8)  # int(c // 1.75)
    assert scaled_box((7, 0, 14, 13), 10, 14) == (5, 0, 10, 9)


def test_mix_region_swaps_box_with_reversed_batch():
    grid = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    mixed = mix_region(grid, (1, 0, 3, 2), (2, 3))
    assert torch.equal(mixed[0, :, 1:3, 0:2], grid[1, :, 1:3, 0:2])
    assert torch.equal(mixed[1, :, 1:3, 0:2], grid[0, :, 1:3, 0:2])
    outside = torch.ones(4, 4, dtype=torch.bool)
    outside[1:3, 0:2] = False
    assert torch.equal(mixed[:, :, outside], grid[:, :, outside])


def test_mixtoken_aux_outputs_are_flipped_back():
    """With a box covering the whole grid, every token comes from the reversed batch; flipping the aux logits
    back must give sample b the aux logits that sample b's own tokens produce."""
    model = tiny_lvvit().train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, aux_mixed, _ = model(x, 64, 1.0, mix_box=(0, 0, 8, 8))
        _, aux_plain, _ = model(x.flip(0), 64, 1.0)
    assert torch.allclose(aux_mixed, aux_plain.flip(0), atol=1e-5)


def test_tensor_box_equals_tuple_box_and_rescales_like_python():
    model = tiny_lvvit().train()
    x = torch.randn(4, 3, 64, 64)
    for box in [(1, 2, 5, 7), (0, 0, 8, 8), (3, 3, 3, 6)]:
        torch.manual_seed(1)
        cls_t, aux_t, box_t = model(x, 64, 1.0, mix_box=box)
        torch.manual_seed(1)
        cls_x, aux_x, box_x = model(x, 64, 1.0, mix_box=torch.tensor(box))
        assert torch.equal(cls_t, cls_x) and torch.equal(aux_t, aux_x) and tuple(box_x.tolist()) == box_t
        torch.manual_seed(1)
        small = model(x, 48, 0.7, mix_box=box)
        torch.manual_seed(1)
        assert torch.equal(small, model(x, 48, 0.7, mix_box=torch.tensor(box)))
    for grid in (8, 10, 12, 14):  # Python's float floor division (14 // 1.4 == 9), coordinate by coordinate
        for c in range(15):
            assert scaled_box(torch.tensor([c, 0, c, 14]), grid, 14).tolist() == list(scaled_box((c, 0, c, 14), grid,
                                                                                                  14))


def test_compiled_model_runs_every_tensor_box_through_one_graph():
    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = tiny_lvvit().train()
    compiled = torch.compile(model, backend=counting_backend, fullgraph=True)
    x = torch.randn(4, 3, 64, 64)
    try:
        for box in [(1, 2, 5, 7), (0, 0, 8, 8), (0, 1, 1, 8), (2, 0, 6, 3), (4, 4, 4, 4)]:
            torch.manual_seed(2)
            want = model(x, 64, 1.0, mix_box=box)
            torch.manual_seed(2)
            got = compiled(x, 64, 1.0, mix_box=torch.tensor(box))
            assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(want[:2], got[:2]))
        assert len(graphs) == 1, f"{len(graphs)} graphs for 5 boxes"
    finally:
        torch._dynamo.reset()


def test_tensor_box_checked_in_eager_mode():
    import pytest

    model = tiny_lvvit().train()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="mix_box must be"):
        model(x, 64, 1.0, mix_box=torch.tensor([0, 0, 9, 2]))
    with pytest.raises(ValueError, match="mix_box must be"):
        model(x, 64, 1.0, mix_box=torch.tensor([0.0, 0.0, 2.0, 2.0]))
