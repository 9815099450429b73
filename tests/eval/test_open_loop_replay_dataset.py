"""Open-loop against a replay server scores only a replay of the dataset it reads: another dataset (a split, another
export, the same meta/ files with other actions) is refused before any trajectory, and a trajectory the replay serves
from another episode than the one scored is errored."""

from __future__ import annotations

import json
import shutil

import pytest

from eval.dataset_factory import copy_with_actions_negated, make_dataset

pytest.importorskip("gr00t_server")

from gr00t_client import PolicyClient  # noqa: E402
from gr00t_eval.open_loop import OpenLoopConfig, evaluate_open_loop  # noqa: E402
from gr00t_server.policies import ReplayPolicy  # noqa: E402
from serving import running_server  # noqa: E402

LENGTHS = (5, 5, 5)  # one length for all: a replay of another episode is not told apart by its length


def without_first_episode(root, target):
    """A split of dataset `root` at `target`: its episodes 1 and 2 (episode_index 1, 2; positions 0, 1)."""
    shutil.copytree(root, target)
    episodes = (target / "meta" / "episodes.jsonl").read_text().splitlines(keepends=True)
    (target / "meta" / "episodes.jsonl").write_text("".join(episodes[1:]))
    info = json.loads((target / "meta" / "info.json").read_text())
    info.update(total_episodes=len(episodes) - 1, total_frames=sum(LENGTHS[1:]))
    (target / "meta" / "info.json").write_text(json.dumps(info))
    return target


class ReplayWithoutIdentity(ReplayPolicy):
    """A replay as a server that reports no identity (an older gr00t-server) serves it."""

    def identity(self):
        return None


def run(served, dataset, tmp_path, traj_ids=(0, 1)):
    with running_server(served) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        config = OpenLoopConfig(str(dataset), traj_ids=list(traj_ids), execution_horizon=5, plot=False,
                                output_dir=str(tmp_path / "out"))
        return evaluate_open_loop(client, config, report=lambda line: None, progress=False)


@pytest.fixture
def recorded(tmp_path):
    return make_dataset(tmp_path / "full", lengths=LENGTHS, cameras=())


def test_a_replay_of_another_dataset_is_refused_before_any_trajectory(recorded, tmp_path):
    split = without_first_episode(recorded, tmp_path / "split")
    with pytest.raises(ValueError, match=r"dataset_meta_sha256 [0-9a-f]{16}.*\bsplit\b.*dataset_meta_sha256 [0-9a-f]{16}"):
        run(ReplayPolicy(recorded, execution_horizon=5), split, tmp_path)
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_replay_of_the_same_meta_files_with_other_actions_is_refused(recorded, tmp_path):
    other = copy_with_actions_negated(recorded, tmp_path / "negated")
    with pytest.raises(ValueError, match=r"dataset_data_sha256 [0-9a-f]{16}.*dataset_data_sha256 [0-9a-f]{16}"):
        run(ReplayPolicy(other, execution_horizon=5), recorded, tmp_path)
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_copy_of_the_replayed_dataset_at_another_path_is_scored(recorded, tmp_path):
    copy = shutil.copytree(recorded, tmp_path / "elsewhere" / "copy")
    result = run(ReplayPolicy(recorded, execution_horizon=5), copy, tmp_path, traj_ids=(0, 1, 2))
    assert sorted(result.trajectories) == [0, 1, 2] and not result.errored
    assert result.avg_mse == 0.0


def test_a_trajectory_replayed_from_another_episode_index_is_errored(recorded, tmp_path):
    """A replay that reports no identity cannot be checked at the start; its dataset_episode_index still tells."""
    split = without_first_episode(recorded, tmp_path / "split")
    result = run(ReplayWithoutIdentity(recorded, execution_horizon=5), split, tmp_path)
    assert not result.trajectories and sorted(result.errored) == [0, 1]
    assert "episode_index 0" in result.errored[0] and "episode_index 1" in result.errored[0]


def test_a_replay_that_reports_no_identity_of_the_same_dataset_is_scored(recorded, tmp_path):
    result = run(ReplayWithoutIdentity(recorded, execution_horizon=5), recorded, tmp_path, traj_ids=(0, 1, 2))
    assert sorted(result.trajectories) == [0, 1, 2] and result.avg_mse == 0.0


def test_the_replay_and_open_loop_hash_a_dataset_with_one_function(recorded):
    from gr00t_eval.dataset import LeRobotDataset
    from gr00t_eval.dataset.identity import replay_hashes

    served = ReplayPolicy(recorded, execution_horizon=5).identity()
    assert replay_hashes(LeRobotDataset(recorded)) == {k: served[k] for k in ("dataset_meta_sha256", "dataset_data_sha256")}
