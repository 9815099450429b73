"""Real Meta-World: record -> serve (ReplayPolicy) -> rollout without --seed succeeds; an interrupted record loads;
a camera that does not exist gives errors and a non-zero exit, never a plausible 0%."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

from eval.scale_fixtures import policy_server, sim_replay_policy  # noqa: E402
from gr00t_eval.cli import main  # noqa: E402
from gr00t_eval.dataset import LeRobotDataset  # noqa: E402

pytest.importorskip("metaworld")
pytestmark = [pytest.mark.sim, pytest.mark.slow]

N_EPISODES = 2
HORIZON = 8


def test_record_serve_rollout_needs_no_seed_the_replay_server_reports_the_recorded_ones(recorded_reach, tmp_path,
                                                                                         capsys):
    with policy_server(sim_replay_policy(recorded_reach, HORIZON)) as server:
        code = main(["rollout", "--env-name", "metaworld/reach-v3", "--n-episodes", str(N_EPISODES), "--n-envs", "1",
                     "--n-action-steps", str(HORIZON), "--max-episode-steps", "200", "--policy-client-port", str(server.port),
                     "--env-kwarg", "image_size=32", "--no-video", "--vectorization", "sync", "--output-dir", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [e["seed"] for e in results["per_episode"]] == [40, 41]
    assert results["overall"]["pc_success"] >= 95.0


def test_a_camera_that_does_not_exist_scores_nothing_exits_2_and_leaves_no_run(recorded_reach, tmp_path, capsys):
    with policy_server(sim_replay_policy(recorded_reach, HORIZON)) as server:
        code = main(["rollout", "--env-name", "metaworld/reach-v3", "--n-episodes", "2", "--n-envs", "1",
                     "--n-action-steps", str(HORIZON), "--policy-client-port", str(server.port), "--no-video",
                     "--env-kwarg", "camera=corner9", "--env-kwarg", "image_size=32", "--vectorization", "sync",
                     "--output-dir", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2
    assert "no episode was scored: task metaworld/reach-v3 failed" in captured.err and "corner9" in captured.err
    assert "success rate" not in captured.out
    assert not (tmp_path / "out" / "run.json").exists() and not (tmp_path / "out" / "results.json").exists()


def test_an_interrupted_record_leaves_a_dataset_that_loads_with_the_finished_episodes(tmp_path):
    root = tmp_path / "reach"
    command = [sys.executable, "-c", "import sys; from gr00t_eval.cli import main; sys.exit(main())", "record",
               "--env-name", "metaworld/reach-v3", "--episodes", "200", "--output", str(root), "--image-size", "32"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    info = root / "meta" / "info.json"
    while time.monotonic() < deadline and process.poll() is None:
        if info.is_file() and json.loads(info.read_text())["total_episodes"] >= 2:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    dataset = LeRobotDataset(root)
    assert 2 <= dataset.num_episodes < 200
    assert [dataset.episode(i).extras["seed"] for i in range(dataset.num_episodes)] == list(range(dataset.num_episodes))
    assert dataset.episode(dataset.num_episodes - 1).actions("eef_delta").shape[0] == dataset.episode_lengths[-1]
    assert "INTERRUPTED" in output


def test_a_misspelt_metaworld_task_is_one_line_exit_2_before_connecting_or_writing(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["rollout", "--env-name", "metaworld/reech-v3", "--n-episodes", "1", "--policy-client-port", "1",
                 "--timeout-ms", "60000", "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "unknown Meta-World task 'reech-v3'" in err[0] and "reach-v3" in err[0]
    assert not out.exists()
