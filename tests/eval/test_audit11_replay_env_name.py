"""A rollout against a replay server of another task's recordings is refused, naming both env names, instead of a
plausible 0% with exit 0 (audit11 M1): the replay's reset info carries each episode's recorded env_name (from
meta/episodes.jsonl) next to its seed. Datasets without env_name, and servers that report none, keep working."""

from __future__ import annotations

import json
import os
import time

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

from eval.scale_fixtures import policy_server, sim_replay_policy  # noqa: E402
from gr00t_eval.cli import main  # noqa: E402

pytest.importorskip("metaworld")
pytestmark = [pytest.mark.sim, pytest.mark.slow]

HORIZON = 8


def rollout(port, env_name, output_dir, n_envs=1):
    return main(["rollout", "--env-name", env_name, "--n-episodes", "2", "--n-envs", str(n_envs),
                 "--n-action-steps", str(HORIZON), "--max-episode-steps", "200", "--policy-client-port", str(port),
                 "--env-kwarg", "image_size=32", "--no-video", "--vectorization", "sync", "--output-dir", str(output_dir)])


def test_the_replay_reset_info_over_the_wire_carries_the_recorded_env_name(recorded_reach):
    from gr00t_client import PolicyClient

    with policy_server(sim_replay_policy(recorded_reach, HORIZON)) as server:
        with PolicyClient(host="127.0.0.1", port=server.port) as client:
            one = client.reset(options={"episode_index": 1})
            rows = client.reset(options={"episode_index": [0, 1]})
    assert one["env_name"] == "metaworld/reach-v3" and one["seed"] == 41
    assert rows["env_name"] == ["metaworld/reach-v3", "metaworld/reach-v3"]


@pytest.mark.parametrize("n_envs", [1, 2])
def test_a_rollout_of_another_task_against_a_replay_is_refused_naming_both_envs(recorded_reach, tmp_path, capsys,
                                                                                n_envs):
    started = time.monotonic()
    with policy_server(sim_replay_policy(recorded_reach, HORIZON)) as server:
        code = rollout(server.port, "metaworld/push-v3", tmp_path / "out", n_envs=n_envs)
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert code == 2, printed
    assert "metaworld/reach-v3" in printed and "RecordedEnvMismatchError" in printed, printed
    assert "no episode was scored: task metaworld/push-v3 failed" in captured.err, printed
    # nothing scored (no 0% over replayed reach actions in push), and no run left to refuse the corrected command
    assert "success rate:  0.0" not in printed
    assert not (tmp_path / "out" / "run.json").exists() and not (tmp_path / "out" / "results.json").exists()
    assert elapsed < 60, elapsed  # refused at the first reset, not after 2 x 200 steps


def test_a_dataset_without_env_names_still_replays_with_its_recorded_seeds(recorded_reach, tmp_path, capsys):
    import shutil

    root = tmp_path / "no_env_name"
    shutil.copytree(recorded_reach, root)
    episodes = root / "meta" / "episodes.jsonl"
    lines = [json.loads(line) for line in episodes.read_text().splitlines() if line.strip()]
    assert all("env_name" in line for line in lines)
    episodes.write_text("".join(json.dumps({k: v for k, v in line.items() if k != "env_name"}) + "\n" for line in lines))
    with policy_server(sim_replay_policy(root, HORIZON)) as server:
        code = rollout(server.port, "metaworld/reach-v3", tmp_path / "out")
    assert code == 0, capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [e["seed"] for e in results["per_episode"]] == [40, 41]
    assert results["overall"]["pc_success"] >= 95.0


def test_the_matching_task_still_replays_to_success(recorded_reach, tmp_path, capsys):
    with policy_server(sim_replay_policy(recorded_reach, HORIZON)) as server:
        code = rollout(server.port, "metaworld/reach-v3", tmp_path / "out", n_envs=2)
    assert code == 0, capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["overall"]["pc_success"] >= 95.0
