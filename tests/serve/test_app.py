"""The server's preparation: saved latency profiles are reused only when sound, measured again otherwise."""
import json

from serve_helpers import write_tiny_checkpoint


def _table(source, subnets, path, logged):
    from supervit.serve.app import latency_table

    return latency_table(source, subnets, [1], threads=1, path=str(path), rounds=1, warmup=0, progress=False,
                         log=logged.append)


def test_a_profile_taken_with_spinning_threads_is_measured_again(tmp_path):
    import torch

    from supervit import deploy
    from supervit.models import Subnet

    torch.set_num_threads(1)
    source = deploy.load_source(checkpoint=write_tiny_checkpoint(tmp_path / "tiny.pth"))
    subnets = [Subnet(16, 0.5), Subnet(64, 1.0)]
    path = tmp_path / "profiles.json"
    logged = []
    first = _table(source, subnets, path, logged)
    assert len(logged) == 1 and "profiling" in logged[0]
    assert set(first) == {str(s) for s in subnets}

    logged.clear()
    _table(source, subnets, path, logged)
    assert logged == []  # sound and covering: reused

    stored = json.loads(path.read_text())
    (key, profile), = stored["profiles"].items()
    profile["spinning_threads"] = True
    for row in profile["rows"]:
        row["latency_ms"] = 1e6  # a reused unsound profile would show in the table
    path.write_text(json.dumps(stored))
    again = _table(source, subnets, path, logged)
    assert len(logged) == 1 and "profiling" in logged[0]
    assert all(ms < 1e5 for by_batch in again.values() for ms in by_batch.values())
    assert not json.loads(path.read_text())["profiles"][key]["spinning_threads"]

    logged.clear()
    profile = json.loads(path.read_text())["profiles"][key]
    del profile["conditions"]["omp_wait_policy"]  # an older profile that does not say how it was measured
    path.write_text(json.dumps({"profiles": {key: profile}}))
    _table(source, subnets, path, logged)
    assert len(logged) == 1 and "profiling" in logged[0]
