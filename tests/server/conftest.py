"""Server test fixtures: one tiny random-weight GR00T N1.7 checkpoint per test session."""

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny checkpoint (tags new_embodiment and libero_sim) in the released file layout."""
    from gr00t_server.test_checkpoint import make_test_checkpoint

    return make_test_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"), size="tiny", seed=0)
