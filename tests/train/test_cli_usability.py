"""The command lines used without reading the source: help, errors, defaults taken from data and checkpoints, the
printed re-evaluation command, --subnets, --epochs and --finetune's trunk check."""
from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys

import pytest
import torch

from supervit.models import read_checkpoint
from train import cli, engine, main_deit, main_lvvit
from train.model_source import chosen_subnets

from shared_helpers import TINY_DEIT
from trainer_helpers import CLASSES, TINY_DEMO_MODEL, TINY_IMAGENET_MODEL, TINY_LVVIT_MODEL, as_json, \
    write_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = ["--batch-size", "4", "--max-steps-per-epoch", "1", "--no-progress", "--device", "cpu", "--threads", "1",
         "--eval-interval", "0"]
TEST_ONLY_FLAGS = {"--dump-rank-weights"}


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "imagenet", per_class=2)


@pytest.mark.parametrize("module", [main_deit, main_lvvit])
def test_every_option_has_help_and_shows_its_default(module):
    parser = module.get_args_parser()
    undocumented = [a.option_strings or a.dest for a in parser._actions
                    if not a.help and not set(a.option_strings) & TEST_ONLY_FLAGS]
    assert not undocumented
    text = parser.format_help()
    assert "{L}" not in text and "(default: 300)" in text and "--max-steps-per-epoch" in text
    assert "--model-kwargs" in text and "--subnets" in text


def test_both_scripts_accept_the_same_short_flags():
    def short(module):
        return {f for a in module.get_args_parser()._actions for f in a.option_strings if not f.startswith("--")}

    assert short(main_deit) == short(main_lvvit) and {"-b", "-j", "-vb"} <= short(main_deit)


@pytest.mark.parametrize("module", [main_deit, main_lvvit])
def test_explicit_options_are_recognized_in_every_form(module):
    """--opt 5, --opt=5, an abbreviation and a short flag all count as written; defaults do not."""
    parser = module.get_args_parser()
    for argv in (["--warmup-epochs", "2"], ["--warmup-epochs=2"], ["--warmup-ep", "2"], ["--warmup-e=2"]):
        args = cli.parse(parser, argv, demo=False)
        assert args.explicit == ["warmup_epochs"] and args.warmup_epochs == 2, argv
    args = cli.parse(parser, ["-b", "8"], demo=False)
    assert args.explicit == ["batch_size"] and args.batch_size == 8
    assert parser.parse_args([]).epochs == 300  # the defaults are back after the probe


def test_help_answers_without_importing_torch():
    code = ("import runpy, sys\nsys.argv = ['main_lvvit.py', '--help']\ntry:\n"
            "    runpy.run_path('train/main_lvvit.py', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nassert 'torch' not in sys.modules, 'torch imported for --help'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "default: 300" in done.stdout


def test_user_error_is_one_line_and_exit_code_2(tmp_path):
    done = subprocess.run([sys.executable, "train/main_deit.py", "--data-path", str(tmp_path / "nowhere"),
                           "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("main_deit.py: error: --data-path") and "is not a directory" in lines[0]


@pytest.mark.parametrize("argv,match", [
    (["--demo", "--model", "vit_h", "--data-path", "IMAGENET"], "--model must be one of"),
    (["--demo", "--subnets", "28:1,12:0.5"], "--subnets: the model has no sub-network 12:0.5; accepted: 16:0.5,"),
    (["--demo", "--subnets", "28:0.5"], "training needs the full keep of every size listed"),
    (["--demo", "--amp-dtype", "float16"], "--amp-dtype float16 needs CUDA"),
    pytest.param(["--demo", "--device", "cuda"], "--device cuda was asked for but CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_runtime_user_errors_print_one_line(tmp_path, capsys, imagenet, argv, match):
    argv = [imagenet if a == "IMAGENET" else a for a in argv]
    if "--data-path" in argv:
        argv.remove("--demo")
    code = cli.run_script(main_deit.main, QUICK + ["--model-kwargs", as_json(TINY_DEMO_MODEL)] + argv)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_subnets_syntax_errors_name_the_value():
    with pytest.raises(SystemExit):
        main_deit.parse_args(["--subnets", "224"])
    assert cli.parse_subnets("224:1, 160:0.5") == [(224, 1.0), (160, 0.5)]


def test_sample_subnets_within_allowed():
    allowed = {(28, 1.0), (28, 0.5), (20, 1.0)}
    for seed in range(20):
        draw = engine.sample_subnets(random.Random(seed), (16, 20, 24, 28), (0.5, 0.7, 1.0), allowed)
        assert draw == [(28, 1.0), (28, 0.5), (20, 1.0), None]  # 20 has no reduced keep listed: that slot is empty


def test_lvvit_epochs_n_means_n_epochs(imagenet):
    base = [imagenet, "--device", "cpu"]
    assert main_lvvit.parse_args(base + ["--epochs", "1"]).cooldown_epochs == 0
    assert main_lvvit.parse_args(base).cooldown_epochs == 10  # the reference: 300 + 10
    assert main_lvvit.parse_args(base + ["--epochs", "1", "--cooldown-epochs", "2"]).cooldown_epochs == 2


def accuracies(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.endswith(("_acc1", "_acc5"))}


def _reeval_argv(printed: str, script: str) -> list[str]:
    line = next(x for x in printed.splitlines() if x.startswith("re-evaluate with: "))
    argv = shlex.split(line[len("re-evaluate with: "):])
    assert os.path.samefile(argv[0], sys.executable)
    assert os.path.samefile(os.path.join(ROOT, argv[1]) if not os.path.isabs(argv[1]) else argv[1],
                            os.path.join(ROOT, "train", script))
    return argv[2:]


def test_reeval_command_works_as_printed_deit(tmp_path, imagenet, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "deit"
    trained = main_deit.main(["--data-path", imagenet, "--model-kwargs", as_json(TINY_IMAGENET_MODEL),
                              "--epochs", "1", "-j", "0", "--output", str(out), *QUICK])
    printed = capsys.readouterr().out
    assert f"classes: {len(CLASSES)} (the class folders of" in printed  # no --nb-classes: taken from train/
    again = main_deit.main(_reeval_argv(printed, "main_deit.py") + ["--no-progress", "--threads", "1"])
    assert accuracies(again) == pytest.approx(accuracies(trained))
    info = read_checkpoint(out / "checkpoint.pth")["supervit"]
    assert info["model_config"]["arch"] == "super_deit_s"
    assert info["model_config"]["kwargs"]["num_classes"] == len(CLASSES)
    rows = info["accuracy"]["rows"]
    assert len(rows) == 12 and info["accuracy"]["num_images"] == 6 and info["accuracy"]["ema"] is False
    assert {r["keep_ratio"] for r in rows} == {0.5, 0.7, 1.0} and all(r["gmacs"] > 0 for r in rows)
    assert rows[-1]["acc1"] == pytest.approx(trained["80_1_acc1"])


def test_reeval_command_works_as_printed_lvvit_with_subnets(tmp_path, imagenet, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    seen = []
    monkeypatch.setattr(engine, "STEP_HOOKS", [lambda event: seen.append(event["subnet"])])
    out = tmp_path / "lvvit"
    trained = main_lvvit.main([imagenet, "--model-kwargs", as_json(TINY_LVVIT_MODEL), "--epochs", "2",
                               "--warmup-epochs", "0", "-j", "0", "--output", str(out),
                               "--subnets", "80:1,80:0.5,48:1,48:0.7", *QUICK])
    printed = capsys.readouterr().out
    assert len(open(out / "log.jsonl").read().splitlines()) == 2  # --epochs 2: two epochs, no cool-down added
    assert set(seen) <= {(80, 1.0), (80, 0.5), (48, 1.0), (48, 0.7)} and len(seen) == 2 * 4
    assert sorted(k for k in trained if k.endswith("_acc1")) == ["48_0.7_acc1", "48_1_acc1", "80_0.5_acc1",
                                                                 "80_1_acc1"]
    argv = _reeval_argv(printed, "main_lvvit.py")
    assert "--subnets" in argv
    again = main_lvvit.main(argv + ["--no-progress", "--threads", "1", "-j", "0"])
    assert accuracies(again) == pytest.approx(accuracies(trained))
    accuracy = read_checkpoint(out / "last.pth.tar")["supervit"]["accuracy"]
    assert [(r["img_size"], r["keep_ratio"]) for r in accuracy["rows"]] == [(48, 0.7), (48, 1.0), (80, 0.5),
                                                                            (80, 1.0)]


def test_reeval_command_works_as_printed_demo(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "demo"
    trained = main_lvvit.main(["--demo", "--model-kwargs", as_json(TINY_DEMO_MODEL), "--epochs", "1",
                               "--output", str(out), "--subnets", "28:1,28:0.5", *QUICK])  # 2 of 12: quicker
    argv = _reeval_argv(capsys.readouterr().out, "main_lvvit.py")
    assert "--model-kwargs" not in argv  # the architecture comes from the checkpoint
    again = main_lvvit.main(argv + ["--no-progress", "--threads", "1"])
    assert again["28_1_acc1"] == pytest.approx(trained["28_1_acc1"])
    results = json.load(open(out / "results.json"))
    assert results["model_config"]["arch"] == "super_lvvit_s" and results["num_images"] == 1000


def test_eval_subset_of_subnets_needs_no_full_keep():
    from supervit.models import SuperDeiT

    model = SuperDeiT(**TINY_DEIT)
    args = main_deit.parse_args(["--demo", "--subnets", "16:0.5"])
    assert chosen_subnets(args, model, training=False) == [(16, 0.5)]


def test_finetune_refuses_another_model_family(tmp_path, capsys):
    import timm

    from train.distributed import DistInfo
    from train.runner import finetune_from

    tiny = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY_IMAGENET_MODEL.items()}
    deit = timm.create_model("super_deit_s", num_classes=3, **tiny)
    torch.save({"model": deit.state_dict(), "arch": "super_deit_s"}, tmp_path / "deit.pth")
    lvvit = timm.create_model("super_lvvit_s", num_classes=3, **{**tiny, "stem_dim": 8})
    before = {k: v.clone() for k, v in lvvit.state_dict().items()}
    with pytest.raises(cli.UsageError, match=r"written for super_deit_s\) does not fit super_lvvit_s: \d+ trunk "
                                             r"tensor.*patch_embed.proj.weight \(file \(32, 3, 16, 16\) vs model "
                                             r"\(32, 8, 8, 8\)\).*--finetune-partial"):
        finetune_from(lvvit, str(tmp_path / "deit.pth"), DistInfo(), target="super_lvvit_s")
    assert all(torch.equal(before[k], v) for k, v in lvvit.state_dict().items())  # nothing loaded
    finetune_from(lvvit, str(tmp_path / "deit.pth"), DistInfo(), allow_partial=True, target="super_lvvit_s")
    assert "keep their random initialisation: patch_embed.proj.weight" in capsys.readouterr().out
    assert torch.equal(lvvit.blocks[0].attn.qkv.weight, deit.blocks[0].attn.qkv.weight)  # what fits is loaded
