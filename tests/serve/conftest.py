"""The serve tests: the policy (pure, fast) and one server started on loopback (marked slow, run by CI)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (starts a local Ray and Ray Serve)")
