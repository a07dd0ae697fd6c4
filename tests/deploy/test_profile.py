"""Latency profiles: rows per sub-network, keys by settings, the profile file, bad input; the CUDA-graph wrapper."""
import json

import pytest
import torch

from supervit.deploy import profile as profiling
from supervit.deploy.cli import main as deploy_main
from supervit.deploy.cuda_graph import CudaGraphSubnet
from supervit.deploy import DeployError
from supervit.models import flops

from deploy_helpers import tiny_model


def test_profile_rows_cover_the_subnets_with_gmacs_and_conditions():
    model = tiny_model()
    prof = profiling.profile_model(model, "tiny", batch=2, rounds=2, warmup=1, progress=False)
    assert prof["key"].startswith("tiny|cpu-") and prof["key"].endswith("|b2|fp32|eager|auto")
    assert [(r["img_size"], r["keep_ratio"]) for r in prof["rows"]] == model.subnets()
    for row in prof["rows"]:
        assert row["gmacs"] == pytest.approx(flops(model, row["img_size"], row["keep_ratio"]))
        assert 0 < row["min_ms"] <= row["latency_ms"] <= row["max_ms"]
        assert row["img_per_s"] == pytest.approx(2 / (row["latency_ms"] / 1e3))
    cond = prof["conditions"]
    assert cond["batch"] == 2 and cond["mode"] == "eager" and cond["load_before"] is not None
    json.dumps(prof)


def test_profile_in_another_dtype_leaves_the_callers_model_as_it_was():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prof = profiling.profile_model(model, "tiny", dtype="bf16", subnets=[(16, 1.0)], rounds=1, warmup=0,
                                   progress=False)
    assert prof["settings"]["dtype"] == "bf16" and len(prof["rows"]) == 1
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_compile_mode_gives_the_eager_logits():
    model = tiny_model()
    x = torch.randn(2, 1, 16, 16)
    runners = profiling._runners(model, [(12, 0.5)], x, "compile")
    with torch.inference_mode():
        assert torch.allclose(runners[(12, 0.5)](), model(x, img_size=12, keep_ratio=0.5), atol=1e-5)


def test_saved_profiles_are_merged_by_key(tmp_path):
    path = str(tmp_path / "p.json")
    a = {"key": "a", "rows": []}
    b = {"key": "b", "rows": [1]}
    profiling.save_profile(a, path)
    profiling.save_profile(b, path)
    profiling.save_profile({"key": "a", "rows": [2]}, path)
    assert profiling.read_profiles(path) == {"a": {"key": "a", "rows": [2]}, "b": b}
    assert list(tmp_path.iterdir()) == [tmp_path / "p.json"]  # no temporary left behind
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DeployError, match="broken.json"):
        profiling.read_profiles(str(tmp_path / "broken.json"))


def test_bad_settings_name_the_value():
    model = tiny_model()
    with pytest.raises(DeployError, match=r"unknown sub-network \(10, 0.5\).*8:0.5"):
        profiling.profile_model(model, "tiny", subnets=[(10, 0.5)], rounds=1, progress=False)
    with pytest.raises(DeployError, match="mode must be one of"):
        profiling.profile_model(model, "tiny", mode="fast", rounds=1, progress=False)
    with pytest.raises(DeployError, match="dtype must be one of"):
        profiling.profile_model(model, "tiny", dtype="int8", rounds=1, progress=False)
    with pytest.raises(DeployError, match="IMG_SIZE:KEEP_RATIO"):
        profiling.parse_subnets("224-0.7")


def test_profile_cli_prints_and_saves(capsys, tmp_path, tiny_checkpoint):
    store = tmp_path / "profiles.json"
    code = deploy_main(["profile", "--checkpoint", tiny_checkpoint, "--subnets", "8:0.5,16:1", "--rounds", "2",
                        "--warmup", "0", "--profile", str(store), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "| 8 | 0.5 |" in out and "| 16 | 1 |" in out
    (prof,) = profiling.read_profiles(str(store)).values()
    assert len(prof["rows"]) == 2
    code = deploy_main(["profile", "--checkpoint", tiny_checkpoint, "--subnets", "9:0.5", "--profile", str(store)])
    assert code == 2 and "unknown sub-network (9, 0.5)" in capsys.readouterr().err
    code = deploy_main(["profile", "--checkpoint", tiny_checkpoint, "--mode", "cuda-graph", "--profile", str(store)])
    assert code == 2 and "--device cuda" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_graph_without_cuda_is_a_clear_error():
    with pytest.raises(DeployError, match="CUDA graphs need a CUDA GPU"):
        CudaGraphSubnet(tiny_model(), 8, 0.5, batch=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replays_the_eager_logits():
    model = tiny_model().cuda()
    graph = CudaGraphSubnet(model, 12, 0.5, batch=3)
    for seed in range(2):  # new inputs each replay
        x = torch.randn(3, 1, 16, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        with torch.inference_mode():
            expected = model(x, img_size=12, keep_ratio=0.5)
        torch.testing.assert_close(graph(x), expected, atol=1e-4, rtol=1e-4)
    prof = profiling.profile_model(model, "tiny", device="cuda", mode="cuda-graph", rounds=2, progress=False)
    assert len(prof["rows"]) == 6 and prof["settings"]["mode"] == "cuda-graph"
    with pytest.raises(DeployError, match="captured for input"):
        graph(torch.randn(2, 1, 16, 16, device="cuda"))


@pytest.mark.parametrize("command", ["profile", "choose", "cascade", "export"])
def test_help_shows_real_defaults_only(command, capsys):
    """Every subcommand's --help names its defaults (fp32, eager, ...) and prints no '(default: None)'."""
    with pytest.raises(SystemExit) as done:
        deploy_main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text
    if command != "export":
        assert "(default: fp32)" in text and "(default: eager)" in text
