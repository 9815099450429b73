"""Server test fixtures: one tiny random-weight GR00T N1.7 checkpoint per test session."""

import shutil

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny checkpoint (tags new_embodiment and libero_sim) in the released file layout."""
    from gr00t_server.test_checkpoint import make_test_checkpoint

    return make_test_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"), size="tiny", seed=0)


@pytest.fixture(scope="module")
def config():
    """A tiny N1.7 config (one per test module, so a module may change it freely)."""
    from gr00t_server.model import tiny_config

    return tiny_config()


@pytest.fixture(scope="module")
def model(config):
    """A tiny random-weight N1.7 network in eval mode, seeded (one per test module)."""
    import torch

    from gr00t_server.model import Gr00tN1d7

    torch.manual_seed(0)
    return Gr00tN1d7(config).eval()


@pytest.fixture
def copy_of(tiny_checkpoint, tmp_path):
    """A fresh copy of the session's tiny checkpoint, to damage."""
    def make():
        target = tmp_path / "ckpt"
        shutil.copytree(tiny_checkpoint, target)
        return target
    return make


@pytest.fixture
def serve_error(capsys, monkeypatch):
    """serve_error(checkpoint, tag="new_embodiment"): stderr of `gr00t-server serve --model-path checkpoint`, which
    must fail with exit code 2 in one line. A checkpoint that loads fails the test instead of starting a server."""
    from gr00t_server import cli
    from gr00t_server import server as server_module

    class NoServer:
        left_policy_call_running = False  # read by serve after run()

        def __init__(self, policy, **kwargs):
            pass

        def start(self):
            pass

        def run(self):
            pass

    def run(checkpoint, tag="new_embodiment"):
        monkeypatch.setattr(server_module, "PolicyServer", NoServer)
        rc = cli.main(["serve", "--model-path", str(checkpoint), "--embodiment-tag", tag, "--device", "cpu",
                       "--no-warmup"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert err.count("\n") == 1, err  # one line, no traceback
        return err

    return run
