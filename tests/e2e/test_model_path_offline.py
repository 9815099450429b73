"""The model path offline end to end: a recorded Meta-World dataset -> `make-test-checkpoint --dataset-path
--embodiment metaworld` -> `gr00t-server serve --model-path` (a real server subprocess, tiny N1.7 network on CPU)
-> `gr00t-eval open-loop` and `gr00t-eval rollout` in a real Meta-World env, a few steps each."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Iterator, Tuple

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco; inherited by env workers

from gr00t_eval.cli import main as eval_main  # noqa: E402
from serving import SERVER_CLI, free_port, served  # noqa: E402

pytest.importorskip("metaworld")
pytest.importorskip("torch")
pytestmark = [pytest.mark.sim, pytest.mark.slow]

HORIZON = 8


def _run_server_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SERVER_CLI, *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Tuple[Path, Path]:
    root = tmp_path_factory.mktemp("model_path")
    dataset = root / "reach"
    assert eval_main(["record", "--env-name", "metaworld/reach-v3", "--episodes", "1", "--output", str(dataset),
                      "--image-size", "32", "--seed", "0"]) == 0
    made = _run_server_cli("make-test-checkpoint", str(root / "ckpt"), "--dataset-path", str(dataset), "--embodiment", "metaworld")
    assert made.returncode == 0, made.stderr
    return root / "ckpt", dataset


@pytest.fixture(scope="module")
def model_server(checkpoint) -> Iterator[Tuple[int, Path]]:
    ckpt, dataset = checkpoint
    port = free_port()
    with served("serve", "--model-path", str(ckpt), "--embodiment-tag", "new_embodiment", "--use-sim-policy-wrapper",
                "--device", "cpu", "--port", str(port)):
        yield port, dataset


def test_checkpoint_carries_the_dataset_keys_and_statistics(checkpoint):
    ckpt, dataset = checkpoint
    kwargs = json.loads((ckpt / "processor_config.json").read_text())["processor_kwargs"]
    configs = kwargs["modality_configs"]["new_embodiment"]
    assert configs["video"]["modality_keys"] == ["corner2"]
    assert configs["state"]["modality_keys"] == ["eef_pos", "gripper", "objects", "goal"]
    assert configs["action"]["modality_keys"] == ["eef_delta", "gripper"]
    assert "strict_action_padding_mask" not in kwargs
    stats = json.loads((ckpt / "statistics.json").read_text())["new_embodiment"]
    recorded = json.loads((dataset / "meta" / "stats.json").read_text())
    action_column = next(k for k in recorded if k.startswith("action"))
    assert stats["action"]["eef_delta"]["max"] == pytest.approx(recorded[action_column]["max"][:3], rel=1e-6)


def test_open_loop_runs_against_the_model_server(model_server, tmp_path):
    port, dataset = model_server
    out = tmp_path / "open_loop"
    assert eval_main(["open-loop", "--dataset-path", str(dataset), "--port", str(port), "--traj-ids", "0",
                      "--steps", "16", "--execution-horizon", str(HORIZON), "--output-dir", str(out)]) == 0
    aggregated = json.loads((out / "results.json").read_text())["aggregated"]
    assert aggregated["n_trajectories"] == 1 and aggregated["avg_mse"] >= 0.0


def test_rollout_runs_in_metaworld_against_the_model_server(model_server, tmp_path):
    port, _ = model_server
    out = tmp_path / "rollout"
    assert eval_main(["rollout", "--env-name", "metaworld/reach-v3", "--n-episodes", "1", "--n-envs", "1",
                      "--n-action-steps", str(HORIZON), "--max-episode-steps", "16", "--policy-client-host", "127.0.0.1",
                      "--policy-client-port", str(port), "--seed", "0", "--env-kwarg", "image_size=32", "--no-video",
                      "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["aggregated"]["n_errors"] == 0
    assert results["per_episode"][0]["length"] == 16
