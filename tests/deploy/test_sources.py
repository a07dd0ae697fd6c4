"""What the deploy commands read and key by: every checkpoint form the trainer reads (with --model), profiles keyed
by the model's identity, the sub-networks a --subnets run evaluated, the thread wait policy of a profile, and a
command line that answers --help and argument errors without loading torch."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from supervit.deploy import DeployError, load_source
from supervit.deploy import profile as profiling
from supervit.deploy.cli import main as deploy_main
from supervit.models import SuperDeiT, SuperLVViT

from deploy_helpers import TINY, tiny_model, tiny_rows, write_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_LVVIT = {**TINY, "stem_dim": 8}


def _deploy(*argv, env=None, timeout=120):
    """``python -m supervit.deploy ARGV`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "supervit.deploy", *argv], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


@pytest.mark.parametrize("argv", [["choose", "--help"], ["profile", "--model", "super_deit_s", "--batch", "0"],
                                  ["cascade", "--model", "super_deit_s"], ["profile", "--model", "super_deit_s",
                                                                          "--subnets", "224-0.7"]])
def test_help_and_argument_errors_answer_without_loading_torch(argv):
    check = ("import runpy, sys; sys.argv = ['-m'] + %r\n"
             "try:\n    runpy.run_module('supervit.deploy', run_name='__main__', alter_sys=True)\n"
             "except SystemExit as done:\n    code = done.code\n"
             "print('TORCH_LOADED' if 'torch' in sys.modules else 'NO_TORCH', code, file=sys.stderr)" % argv)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, timeout=60)
    seconds = time.perf_counter() - start
    assert "NO_TORCH" in done.stderr, done.stderr
    if argv[-1] == "--help":
        assert done.stdout.startswith("usage: python -m supervit.deploy choose")
        assert "NO_TORCH 0" in done.stderr
    else:
        assert "NO_TORCH 2" in done.stderr and "error:" in done.stderr
    assert seconds < 20  # no torch import; generous for a loaded machine (about 0.1 s idle)


def test_the_command_line_sets_a_passive_wait_policy_and_the_profile_records_it(tmp_path, tiny_checkpoint):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    store = tmp_path / "profiles.json"
    done = _deploy("profile", "--checkpoint", tiny_checkpoint, "--subnets", "8:0.5", "--rounds", "1", "--warmup", "0",
                   "--threads", "2", "--profile", str(store), "--no-progress", env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    (prof,) = profiling.read_profiles(str(store)).values()
    assert prof["conditions"]["omp_wait_policy"] == "PASSIVE" and prof["spinning_threads"] is False
    assert "OMP_WAIT_POLICY PASSIVE" in done.stdout


def test_a_profile_measured_with_spinning_threads_is_flagged_and_not_reused(tmp_path, tiny_checkpoint, capsys,
                                                                           monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # as recorded; this process's OpenMP runtime is already set up
    prof = profiling.profile_model(tiny_model(), "tiny", subnets=[(8, 0.5)], rounds=1, warmup=0, progress=False)
    threads = torch.get_num_threads()
    assert prof["conditions"]["omp_wait_policy"] == "ACTIVE" and prof["spinning_threads"] == (threads > 1)
    assert "spinning" in profiling.unsound_reason({**prof, "spinning_threads": True})
    assert profiling.unsound_reason({**prof, "spinning_threads": False}) == ""
    store = tmp_path / "profiles.json"
    argv = ["choose", "--checkpoint", tiny_checkpoint, "--min-accuracy", "75", "--profile", str(store),
            "--rounds", "1", "--warmup", "0", "--threads", "2", "--no-progress"]
    assert deploy_main(argv) == 0
    first = capsys.readouterr()
    assert "measured now" in first.out and "spinning OpenMP threads" in first.err
    (saved,) = profiling.read_profiles(str(store)).values()
    assert saved["spinning_threads"] is True
    assert deploy_main(argv) == 0  # the flagged profile is measured again, and it says so
    second = capsys.readouterr()
    assert "measured now" in second.out and "not reusing the saved profile" in second.err
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert deploy_main(argv) == 0 and "measured now" in capsys.readouterr().out  # a sound profile replaces it
    assert deploy_main(argv) == 0 and "saved profile" in capsys.readouterr().out  # ... and is reused


def test_profile_keys_name_the_architecture_not_the_file(tmp_path):
    torch.manual_seed(0)
    paths = {}
    for folder, model in (("deit", SuperDeiT(**TINY)), ("lvvit", SuperLVViT(**TINY_LVVIT)),
                          ("deit_again", SuperDeiT(**{**TINY, "num_classes": 7}))):
        (tmp_path / folder).mkdir()
        paths[folder] = write_tiny_checkpoint(tmp_path / folder / "last.pth.tar", model=model.eval())
    names = {folder: load_source(path).name for folder, path in paths.items()}
    assert names["deit"] != names["lvvit"]
    assert names["deit"].startswith("super_deit_s-") and names["lvvit"].startswith("super_lvvit_s-")
    assert names["deit"] == names["deit_again"]  # one architecture (any class count): one profile
    assert load_source(model_name="super_deit_s").name == "super_deit_s"


def _published_choice(capsys, argv):
    code = deploy_main(argv + ["--budget-gmacs", "2", "--no-latency"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("form", ["bare", "model_key", "plain_deit"])
def test_every_checkpoint_form_the_trainer_reads_loads_with_model(tmp_path, capsys, form):
    import timm

    torch.manual_seed(0)
    if form == "plain_deit":  # a plain DeiT-S file: one pos_embed, converted into the four tables
        state = timm.create_model("deit_small_patch16_224").state_dict()
    else:
        state = timm.create_model("super_deit_s").state_dict()
    path = tmp_path / "weights.pth"
    torch.save({"model": state} if form == "model_key" else state, path)
    code, out, err = _published_choice(capsys, ["choose", "--checkpoint", str(path), "--model", "super_deit_s"])
    assert code == 0, err
    assert "published ImageNet-1k top-1 of super_deit_s" in out and "img_size 192, keep_ratio 0.5" in out
    source = load_source(str(path), "super_deit_s")
    if form == "plain_deit":
        assert torch.equal(source.model.pos_embed_list[3], state["pos_embed"])
    else:
        assert torch.equal(source.model.cls_token, state["cls_token"])
    code, out, err = _published_choice(capsys, ["choose", "--checkpoint", str(path)])
    assert code == 2 and "--model" in err and len(err.strip().splitlines()) == 1


def test_model_is_checked_against_the_recorded_model_never_ignored(tmp_path, capsys, tiny_checkpoint):
    code, _, err = _published_choice(capsys, ["choose", "--checkpoint", tiny_checkpoint, "--model", "super_lvvit_s"])
    assert code == 2 and "records model 'super_deit_s'" in err and "super_lvvit_s" in err
    code, out, _ = _published_choice(capsys, ["choose", "--checkpoint", tiny_checkpoint, "--model", "super_deit_s"])
    assert code == 0 and "tiny.pth" in out
    with pytest.raises(DeployError, match="does not fit"):  # a DeiT-shaped file read as LV-ViT-S
        torch.save(tiny_model().state_dict(), tmp_path / "bare.pth")
        load_source(str(tmp_path / "bare.pth"), "super_lvvit_s")


def test_choose_picks_among_the_subnets_a_subnets_run_evaluated(tmp_path, capsys):
    model = tiny_model()
    rows = [r for r in tiny_rows(model) if (r["img_size"], r["keep_ratio"]) in {(8, 0.5), (12, 1.0), (16, 1.0)}]
    torch.save({"model": model.state_dict(), "supervit": {
        "model_config": __import__("supervit.models", fromlist=["model_config"]).model_config(model),
        "accuracy": {"epoch": 0, "ema": False, "num_images": 10, "rows": rows}}}, tmp_path / "subset.pth")
    code = deploy_main(["choose", "--checkpoint", str(tmp_path / "subset.pth"), "--min-accuracy", "1",
                        "--no-latency", "--table"])
    out = capsys.readouterr().out
    assert code == 0 and "covers 3 of the model's 6 sub-networks" in out
    assert "img_size 8, keep_ratio 0.5" in out  # the cheapest of the three
    table_rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table_rows) == 3


def test_profile_file_written_by_an_older_version_is_measured_again(tmp_path, tiny_checkpoint, capsys):
    source = load_source(tiny_checkpoint)
    prof = profiling.profile_model(source.model, source.name, rounds=1, warmup=0, progress=False)
    del prof["conditions"]["omp_wait_policy"]
    prof["spinning_threads"] = False
    store = tmp_path / "profiles.json"
    store.write_text(json.dumps({"profiles": {prof["key"]: prof}}))
    code = deploy_main(["choose", "--checkpoint", tiny_checkpoint, "--min-accuracy", "75", "--profile", str(store),
                        "--rounds", "1", "--warmup", "0", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and "measured now" in captured.out and "wait policy" in captured.err


def test_the_python_example_of_docs_deploy_runs(tmp_path, tiny_checkpoint, monkeypatch):
    """The "From Python" block of docs/deploy.md, on a tiny checkpoint, with a budget every sub-network meets."""
    with open(os.path.join(ROOT, "docs", "deploy.md")) as handle:
        text = handle.read()
    code = text.split("## From Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    code = code.replace("runs/demo/last.pth.tar", tiny_checkpoint).replace("latency_ms=20", "latency_ms=1e4")
    code = code.replace("batch=1)", "batch=1, rounds=1, warmup=0, progress=False)")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "docs/deploy.md", "exec"), scope)
    images = torch.randn(3, 1, 16, 16)
    (logits,) = scope["run"](images)
    assert logits.shape == (3, 4) and (tmp_path / "net.onnx").stat().st_size > 0
    assert scope["best"]["acc1"] == max(p["acc1"] for p in scope["points"])
