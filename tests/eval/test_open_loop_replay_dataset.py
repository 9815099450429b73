"""Open-loop against a replay server scores only a replay of the dataset it reads: another dataset (a split, another
export, the same meta/ files with other actions) is refused before any trajectory, the same actions with other meta/
files (or hashed by an older server) are scored with a warning, and a trajectory the replay serves from another
episode than the one scored is errored."""

from __future__ import annotations

import json
import logging
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


class ReplayHashingMetaOtherwise(ReplayPolicy):
    """A replay as an older gr00t-server serves it: the same data hash, a meta/ hash over other files (it still hashed
    meta/episodes_stats.jsonl)."""

    def identity(self):
        return {**super().identity(), "dataset_meta_sha256": "0123456789abcdef"}


class ReplayReportingOnlyMeta(ReplayPolicy):
    """A replay as a gr00t-server that hashed its meta/ files but not its data files serves it."""

    def identity(self):
        return {k: v for k, v in super().identity().items() if k != "dataset_data_sha256"}


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
    with pytest.raises(ValueError, match=r"dataset_data_sha256 [0-9a-f]{16}.*dataset_data_sha256 [0-9a-f]{16}.*\bsplit\b"):
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


def test_a_copy_whose_meta_json_was_only_re_saved_is_scored_with_a_warning_naming_meta(recorded, tmp_path, caplog):
    """Equal data hashes decide: a re-indented modality.json was refused as 'another recording's actions'."""
    copy = shutil.copytree(recorded, tmp_path / "resaved")
    modality = copy / "meta" / "modality.json"
    modality.write_text(json.dumps(json.loads(modality.read_text()), indent=4) + "\n")
    with caplog.at_level(logging.WARNING, logger="gr00t_eval.open_loop"):
        result = run(ReplayPolicy(recorded, execution_horizon=5), copy, tmp_path, traj_ids=(0, 1, 2))
    assert sorted(result.trajectories) == [0, 1, 2] and result.avg_mse == 0.0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("meta/ files differ" in line and "dataset_data_sha256" in line for line in warned), warned
    assert not any("other actions" in line for line in warned), warned


def test_a_replay_that_hashes_meta_as_an_older_server_is_scored_naming_the_files_this_version_leaves_out(
        recorded, tmp_path, caplog):
    """An older gr00t-server still hashed meta/episodes_stats.jsonl: the very same folder was refused as another
    dataset."""
    assert (recorded / "meta" / "episodes_stats.jsonl").is_file()
    with caplog.at_level(logging.WARNING, logger="gr00t_eval.open_loop"):
        result = run(ReplayHashingMetaOtherwise(recorded, execution_horizon=5), recorded, tmp_path, traj_ids=(0, 1, 2))
    assert sorted(result.trajectories) == [0, 1, 2] and result.avg_mse == 0.0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("meta/ files differ" in line and "episodes_stats.jsonl" in line for line in warned), warned


def test_a_replay_that_reports_only_its_meta_hash_is_scored_with_a_warning(recorded, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gr00t_eval.open_loop"):
        result = run(ReplayReportingOnlyMeta(recorded, execution_horizon=5), recorded, tmp_path, traj_ids=(0, 1, 2))
    assert sorted(result.trajectories) == [0, 1, 2] and result.avg_mse == 0.0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("dataset_data_sha256" in line and "not compared" in line for line in warned), warned


def test_the_data_files_hashed_at_start_are_named_with_their_size_first(recorded, tmp_path, caplog):
    """Hashing every data file of a large dataset took minutes before the first trajectory, with no line saying so."""
    size = sum(path.stat().st_size for path in (recorded / "data").rglob("*.parquet"))
    with caplog.at_level(logging.INFO, logger="gr00t_eval.open_loop"):
        run(ReplayPolicy(recorded, execution_horizon=5), recorded, tmp_path, traj_ids=(0,))
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(f"3 data files ({size:,} bytes)" in line for line in said), said


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


def test_results_name_each_trajectorys_episode_index_where_positions_differ_from_it(recorded, tmp_path):
    """--traj-ids are positions: in a split whose first episode is gone, position 0 is episode_index 1, and
    results.json and the console say which episode each position scored."""
    split = without_first_episode(recorded, tmp_path / "split")
    lines = []
    with running_server(ReplayPolicy(split, execution_horizon=5)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        config = OpenLoopConfig(str(split), traj_ids=[0, 1], execution_horizon=5, plot=False,
                                output_dir=str(tmp_path / "out"))
        result = evaluate_open_loop(client, config, report=lines.append, progress=False)
    saved = json.loads(result.results_path.read_text())["trajectories"]
    assert {t: entry["episode_index"] for t, entry in saved.items()} == {"0": 1, "1": 2}
    assert "Running trajectory: 0 (episode_index 1)" in lines and "Running trajectory: 1 (episode_index 2)" in lines
