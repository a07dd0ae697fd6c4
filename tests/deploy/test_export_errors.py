"""Export: bad input is a DeployError naming the value and the accepted ones; nothing is left half-written; the CLI
prints one line and exits 2; a checkpoint with a fixed batch exports and verifies."""
import os

import pytest
import torch

from supervit.deploy import DeployError, export
from supervit.deploy.cli import main as deploy_main
from supervit.models import SuperDeiT

SMALL = dict(img_sizes=(8, 16), keep_ratios=(0.5, 1.0), prune_layers=(1,), patch_size=4, in_chans=1,
             num_classes=3, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return SuperDeiT(**SMALL).eval()


@pytest.mark.parametrize("kwargs, words", [
    (dict(keep_ratio=0.7), ["keep_ratio", "0.7", "[0.5, 1.0]"]),
    (dict(img_size=12), ["img_size", "12", "[8, 16]"]),
    (dict(fmt="tflite"), ["format", "tflite", "onnx", "pt2", "aoti"]),
    (dict(out="missing_dir/net.onnx"), ["missing_dir", "writable folder"]),
    (dict(out="net.pt2"), [".onnx", "net.pt2"]),
    (dict(batch=0), ["batch", "0"]),
    (dict(input_size=2), ["input_size", "2"]),
])
def test_bad_arguments_name_the_value_and_the_accepted_ones(small, tmp_path, kwargs, words):
    args = dict(img_size=16, keep_ratio=0.5, fmt="onnx", out="net.onnx") | kwargs
    args["out"] = str(tmp_path / args["out"])
    with pytest.raises(DeployError) as err:
        export.export_subnet(small, args.pop("img_size"), args.pop("keep_ratio"), args.pop("fmt"), args.pop("out"),
                             **args)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert os.listdir(tmp_path) == []


def test_out_under_a_file_or_a_directory_is_refused(small, tmp_path):
    (tmp_path / "plain_file").write_text("x")
    with pytest.raises(DeployError, match="writable folder"):
        export.export_subnet(small, 16, 0.5, "pt2", tmp_path / "plain_file" / "net.pt2")
    (tmp_path / "folder.pt2").mkdir()
    with pytest.raises(DeployError, match="is a directory"):
        export.export_subnet(small, 16, 0.5, "pt2", tmp_path / "folder.pt2")
    assert sorted(os.listdir(tmp_path)) == ["folder.pt2", "plain_file"]


def test_a_failure_while_writing_leaves_nothing_behind(small, tmp_path, monkeypatch):
    program, _ = export.export_program(small, 16, 0.5)

    def half_written(_program, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch.export, "save", half_written)
    (tmp_path / "net.pt2").write_bytes(b"previous export")
    with pytest.raises(OSError, match="disk full"):
        export.write_program(program, "pt2", tmp_path / "net.pt2")
    assert os.listdir(tmp_path) == ["net.pt2"]  # no temporary file; the previous file is intact
    assert (tmp_path / "net.pt2").read_bytes() == b"previous export"


def test_export_leaves_the_model_as_it_was(small, tmp_path):
    small.train()
    try:
        before = {k: v.clone() for k, v in small.state_dict().items()}
        export.export_subnet(small, 8, 0.5, "pt2", tmp_path / "net.pt2")
        assert small.training and small.default_subnet == (16, 1.0) and len(small.pos_embed_list) == 2
        assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
        umask = os.umask(0)
        os.umask(umask)
        assert os.stat(tmp_path / "net.pt2").st_mode & 0o777 == 0o666 & ~umask
    finally:
        small.eval()


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "net.onnx"
    code = deploy_main(["export", "--model", "super_deit_s", "--img-size", "224", "--keep-ratio", "0.6",
                        "--format", "onnx", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "0.6" in err and "[0.5, 0.7, 1.0]" in err
    code = deploy_main(["export", "--model", "super_deit_s", "--img-size", "224", "--keep-ratio", "0.5",
                        "--format", "trt", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'trt'" in err
    assert os.listdir(tmp_path) == []


def test_cli_exports_a_checkpoint_with_a_fixed_batch_and_verifies_it(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny.pt2"
    code = deploy_main(["export", "--checkpoint", tiny_checkpoint, "--img-size", "12", "--keep-ratio", "0.5",
                        "--format", "pt2", "--out", str(out), "--batch", "3", "--with-kept"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "batch 3" in printed and "kept indices equal: True" in printed
    diff = float(printed.split("max |logits diff| = ")[1].split(",")[0])
    assert diff <= 1e-4
    program = torch.export.load(str(out))
    image = [n for n in program.graph.nodes if n.op == "placeholder"][-1]
    assert tuple(image.meta["val"].shape) == (3, 1, 16, 16)  # fixed batch; the checkpoint's largest size


def test_aoti_with_a_fixed_batch_refuses_another_batch_in_our_runner(tiny_checkpoint, tmp_path, capsys):
    """PyTorch's AOTInductor loader returns the rows of the compiled batch whatever it is given; ours refuses."""
    from supervit.deploy import runners

    out = tmp_path / "tiny_b2.pt2"
    code = deploy_main(["export", "--checkpoint", tiny_checkpoint, "--img-size", "12", "--keep-ratio", "0.5",
                        "--format", "aoti", "--out", str(out), "--batch", "2", "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "batch 2" in printed.out and "export:" not in printed.err  # verified, and no progress bar
    run = runners.load_runner(str(out), "aoti")
    assert tuple(run(torch.randn(2, 1, 16, 16))[0].shape) == (2, 4)
    with pytest.raises(ValueError, match=r"takes input \[2, 1, 16, 16\] \(a fixed batch of 2"):
        run(torch.randn(3, 1, 16, 16))
