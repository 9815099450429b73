"""gr00t-server serve's own messages fit the command: the out-of-memory hint names flags serve has (audit 11, security
finding 3), a replay's start-up block prints no inference mode it ignores (L5), and --log-level takes any case (L6)."""

from __future__ import annotations

import socket

import pytest

from eval.dataset_factory import make_dataset
from gr00t_server.cli import build_parser, main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("serve-cli") / "ds", lengths=(6,))


def _serve_flags() -> set:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    return {option for action in serve._actions for option in action.option_strings}


def test_serve_out_of_memory_names_only_flags_serve_has(dataset, capsys, monkeypatch):
    import gr00t_server.extras as extras

    def dataset_too_big_for_memory():
        def load(path):
            raise MemoryError()
        return load

    monkeypatch.setattr(extras, "require_lerobot_dataset", dataset_too_big_for_memory)
    assert main(["serve", "--dataset-path", str(dataset), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gr00t-server serve: error: out of memory"), err
    named = {word.strip("(),;") for word in err.split() if word.startswith(("--", "(--"))}
    assert named and named <= _serve_flags(), f"flags serve does not have: {named - _serve_flags()} in {err!r}"
    assert "--dataset-path" in named


def test_replay_start_up_block_prints_no_inference_mode_it_ignores(dataset, capsys):
    with socket.socket() as taken:  # serve then stops at the port check, after the start-up block
        taken.bind(("127.0.0.1", 0))
        port = str(taken.getsockname()[1])
        assert main(["serve", "--dataset-path", str(dataset), "--inference-mode", "onnxruntime",
                     "--port", port, "--metrics-port", port]) == 2
    out = capsys.readouterr().out
    assert "  Inference mode: n/a (replay)" in out, out
    assert "onnxruntime" not in out


@pytest.mark.parametrize("spelling", ["debug", "Warning", "ERROR"])
def test_serve_log_level_takes_any_case(tmp_path, capsys, spelling):
    missing = tmp_path / "no-such-dataset"
    assert main(["serve", "--dataset-path", str(missing), "--log-level", spelling]) == 2  # argparse would exit
    assert f"--dataset-path {missing} is not a directory" in capsys.readouterr().err
