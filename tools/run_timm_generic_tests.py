"""Run timm's own generic model tests (its tests/test_models.py) against super_deit_s and super_lvvit_s.

timm's file is not part of this repository: pass its path (from a checkout of pytorch-image-models at the tag of
the installed timm). The file is copied to a temporary folder with two changes: our models join timm's lists of
transformer models (``NON_STD_FILTERS``, which routes every timm ViT to the token-output variant of the config test,
and ``FEAT_INTER_FILTERS``, the modules with ``forward_intermediates``), and a conftest imports supervit and keeps
only the tests parametrized with our models. Results go to ``--out`` (JSON, one outcome per test) and the console.

    python tools/run_timm_generic_tests.py PATH/TO/timm/tests/test_models.py --out runs/timm_tests.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

OUR_MODELS = ("super_deit_s", "super_lvvit_s")
OUR_MODULES = ("super_deit", "super_lvvit")

CONFTEST = '''
import json, os
import pytest
import supervit  # noqa: F401 - registers the models with timm

OURS = {models!r}
RESULTS = {{}}


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        name = getattr(item, "callspec", None) and item.callspec.params.get("model_name")
        (keep if name and name.split(".")[0] in OURS else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        entry = RESULTS.setdefault(report.nodeid, {{}})
        if report.outcome != "passed" or "outcome" not in entry:
            entry["outcome"] = report.outcome
            text = str(report.longrepr) if report.longrepr else ""
            entry["reason"] = text.strip().splitlines()[-1][:300] if text else ""


def pytest_sessionfinish(session):
    with open(os.environ["TIMM_TESTS_RESULTS"], "w") as f:
        json.dump(RESULTS, f, indent=1)
'''


def prepare(timm_tests: str, folder: str) -> str:
    """Copy of timm's test file in ``folder`` with our models in its transformer lists, plus the conftest."""
    with open(timm_tests) as f:
        text = f.read()
    for marker, names in (("NON_STD_FILTERS = [", ["super_*"]), ("FEAT_INTER_FILTERS = [", list(OUR_MODULES))):
        if marker not in text:
            raise SystemExit(f"{timm_tests}: no {marker!r} list; is this timm's tests/test_models.py?")
        text = text.replace(marker, marker + "".join(f"{n!r}, " for n in names), 1)
    path = os.path.join(folder, "test_timm_models.py")
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.join(folder, "conftest.py"), "w") as f:
        f.write(CONFTEST.format(models=OUR_MODELS))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timm_tests", help="path to timm's tests/test_models.py")
    parser.add_argument("--out", default="runs/timm_generic_tests.json", help="JSON results (default: %(default)s)")
    parser.add_argument("-k", default="", help="pytest -k expression to run a subset")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.timm_tests):
        print(f"error: timm_tests: no file {args.timm_tests!r}", file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = tempfile.mkdtemp(prefix="timm_generic_")
    try:
        test_file = prepare(args.timm_tests, folder)
        results = os.path.join(folder, "results.json")
        env = {**os.environ, "TIMM_TESTS_RESULTS": results, "PYTHONPATH": root, "TORCH_DEVICE": "cpu"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", test_file]
        cmd += ["-k", args.k] if args.k else []
        subprocess.run(cmd, env=env, cwd=folder, check=False)
        with open(results) as f:
            outcome = json.load(f)
    finally:
        saved = dict(outcome) if "outcome" in locals() else None
        shutil.rmtree(folder, ignore_errors=True)
    if saved is None:
        print("error: pytest wrote no results", file=sys.stderr)
        return 1
    from supervit.files import atomic_write

    with atomic_write(args.out, make_folder=True) as tmp, open(tmp, "w") as f:
        json.dump({k.split("::", 1)[-1]: v for k, v in saved.items()}, f, indent=1, sort_keys=True)
    for name, entry in sorted(saved.items()):
        print(f"{entry['outcome']:8s} {name.split('::', 1)[-1]}  {entry.get('reason', '')[:120]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
