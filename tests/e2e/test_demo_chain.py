"""The demo chain on small settings: record Meta-World experts -> serve them with ReplayPolicy (a real server
subprocess) -> open-loop error ~0 -> rollout with the recorded seeds succeeds (2 subprocess envs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco; inherited by env workers

from gr00t_eval.cli import main as eval_main  # noqa: E402
from serving import free_port, served  # noqa: E402

pytest.importorskip("metaworld")
pytestmark = [pytest.mark.sim, pytest.mark.slow]

N_EPISODES = 4
EXECUTION_HORIZON = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "reach"
    assert eval_main(["record", "--env-name", "metaworld/reach-v3", "--episodes", str(N_EPISODES), "--output", str(root),
                      "--image-size", "32", "--seed", "0"]) == 0
    return root


@pytest.fixture(scope="module")
def replay_server(dataset):
    port = free_port()
    with served("serve", "--dataset-path", str(dataset), "--embodiment-tag", "new_embodiment",
                "--execution-horizon", str(EXECUTION_HORIZON), "--use-sim-policy-wrapper", "--port", str(port),
                timeout_s=90):
        yield port, dataset


def test_open_loop_against_the_replay_server_has_zero_error(replay_server, tmp_path, capsys):
    port, dataset = replay_server
    out = tmp_path / "open_loop"
    code = eval_main(["open-loop", "--dataset-path", str(dataset), "--port", str(port),
                      "--traj-ids", *map(str, range(N_EPISODES)), "--execution-horizon", str(EXECUTION_HORIZON),
                      "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Average MSE across all trajs: 0.0" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["aggregated"]["avg_mse"] < 1e-6 and results["aggregated"]["n_trajectories"] == N_EPISODES
    assert sorted(p.name for p in out.glob("*.jpeg")) == [f"traj_{i}.jpeg" for i in range(N_EPISODES)]


def test_rollout_with_the_recorded_seeds_succeeds(replay_server, tmp_path, capsys):
    port, _ = replay_server
    out = tmp_path / "rollout"
    code = eval_main(["rollout", "--env_name", "metaworld/reach-v3", "--n_episodes", str(N_EPISODES), "--n_envs", "2",
                      "--n_action_steps", str(EXECUTION_HORIZON), "--max_episode_steps", "200",
                      "--policy_client_host", "127.0.0.1", "--policy_client_port", str(port), "--seed", "0",
                      "--env-kwarg", "image_size=32", "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "results: " in printed and "success rate: " in printed
    results = json.loads((out / "results.json").read_text())
    assert results["aggregated"]["n_episodes"] == N_EPISODES
    assert results["aggregated"]["pc_success"] >= 95.0
    assert [e["seed"] for e in results["per_episode"]] == list(range(N_EPISODES))
    assert all(Path(e["video_path"]).is_file() for e in results["per_episode"])

