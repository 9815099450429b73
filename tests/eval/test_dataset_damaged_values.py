"""Recorded values a dataset should never have been written with - NaN or inf actions, rows out of step order, a
column modality.json names but the file lacks, a refused episode's leftovers - are refused naming the file and
row, by every reader: the replay server (which decodes no video), open-loop's ground truth, the writer's statistics
and make-test-checkpoint. Real parquet and mp4 files written by DatasetWriter, a real replay server on loopback,
the real CLIs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import episode_frames, expected_actions, expected_states, make_dataset
from eval.test_open_loop import EchoPolicy
from gr00t_client import PolicyClient, PolicyServerError
from gr00t_eval import cli
from gr00t_eval.dataset import DatasetWriter, LeRobotDataset
from gr00t_eval.dataset.errors import DatasetError
from gr00t_server.policies.replay import ReplayPolicy
from serving import ReplayOfAnyCopy, running_server

LENGTHS = (6, 9, 4)


def data_file(root: Path, episode: int) -> Path:
    return root / "data" / "chunk-000" / f"episode_{episode:06d}.parquet"


def edit_rows(path: Path, edit) -> None:
    """Rewrite a parquet file with `edit(table) -> table` applied."""
    pq.write_table(edit(pq.read_table(path)), path)


def set_action(table: pa.Table, row: int, index: int, value: float) -> pa.Table:
    actions = [list(map(float, r)) for r in table.column("action").to_pylist()]
    actions[row][index] = value
    column = pa.array(actions, table.schema.field("action").type)
    return table.set_column(table.column_names.index("action"), "action", column)


def take_rows(order) -> callable:
    return lambda table: table.take(pa.array(order))


@pytest.fixture()
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "ds", lengths=LENGTHS)


# --- NaN and inf in recorded actions ---------------------------------------------------------------------


def test_open_loop_errors_a_trajectory_whose_recorded_actions_hold_nan_and_scores_the_others(dataset, tmp_path, capsys):
    clean = make_dataset(tmp_path / "clean", lengths=LENGTHS)
    with running_server(ReplayOfAnyCopy(clean, execution_horizon=3)) as server:
        edit_rows(data_file(dataset, 0), lambda t: set_action(set_action(t, 2, 0, float("nan")), 3, 1, float("inf")))
        out = tmp_path / "out"
        code = cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--no-plots",
                         "--execution-horizon", "3", "--output-dir", str(out), "--traj-ids", "0", "1"])
    printed = capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert code == 1  # errored trajectories fail the run without --allow-errors
    assert list(data["trajectories"]) == ["1"] and data["aggregated"]["avg_mse"] == 0.0  # not NaN, not null
    [errored] = data["errored_trajectories"]
    assert errored["traj_id"] == 0
    assert "episode_000000.parquet: column 'action' holds nan at row 2 (action key 'arm', value 0)" in errored["error"]
    assert "trajectory 0 errored" in printed and "MSE for trajectory 0" not in printed


def test_a_replay_server_refuses_an_episode_with_nan_actions_at_its_reset_naming_file_and_row(dataset):
    edit_rows(data_file(dataset, 1), lambda t: set_action(t, 4, 2, float("inf")))
    with running_server(ReplayPolicy(dataset, execution_horizon=3)) as server:
        client = PolicyClient(port=server.port, timeout_ms=10_000)
        with pytest.raises(PolicyServerError, match=r"episode_000001\.parquet: column 'action' holds inf at row 4 "
                                                     r"\(action key 'arm', value 2\) of episode 1"):
            client.reset({"episode_index": 1})
        client.reset({"episode_index": 0})  # the other episodes replay, and the server answers on
        action, info = client.get_action({})
        np.testing.assert_array_equal(action["arm"][0][:3], expected_actions(0, 6)["arm"][:3])
        client.close()


def store_actions_as_float64(root: Path) -> None:
    """Re-store every episode's 'action' column as float64, as a LeRobot float64 recording holds it."""
    for path in sorted((root / "data").rglob("*.parquet")):
        edit_rows(path, lambda t: t.set_column(t.column_names.index("action"), "action",
                                               t.column("action").cast(pa.list_(pa.float64()))))
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["action"]["dtype"] = "float64"
    (root / "meta" / "info.json").write_text(json.dumps(info))


BEYOND_FLOAT32 = r"holds 1e\+39 at row 4 \(action key 'arm', value 2\) of episode {episode}; recorded actions must be " \
                 r"finite numbers within float32's range"


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "no-strict"])
def test_a_replay_server_refuses_a_float64_action_beyond_float32s_range_at_its_reset_naming_file_and_row(dataset,
                                                                                                          strict):
    store_actions_as_float64(dataset)
    edit_rows(data_file(dataset, 1), lambda t: set_action(t, 4, 2, 1e39))  # finite in float64, inf as served
    with running_server(ReplayPolicy(dataset, execution_horizon=3, strict=strict)) as server:
        client = PolicyClient(port=server.port, timeout_ms=10_000)
        with pytest.raises(PolicyServerError, match=r"episode_000001\.parquet: column 'action' " +
                           BEYOND_FLOAT32.format(episode=1)):
            client.reset({"episode_index": 1})
        client.reset({"episode_index": 0})
        action, info = client.get_action({})
        assert info["current_step"] == 0
        np.testing.assert_array_equal(action["arm"][0][:3], expected_actions(0, 6)["arm"][:3])
        client.close()


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "no-strict"])
def test_calls_refused_for_an_action_beyond_float32s_range_serve_no_later_steps_of_the_episode(dataset, strict):
    store_actions_as_float64(dataset)
    edit_rows(data_file(dataset, 0), lambda t: set_action(t, 4, 2, 1e39))
    policy = ReplayPolicy(dataset, execution_horizon=3, strict=strict)
    for _ in range(3):  # a robot retrying is refused each time, never handed the steps after the refused ones
        with pytest.raises(DatasetError, match=r"episode_000000\.parquet: column 'action' " +
                           BEYOND_FLOAT32.format(episode=0)):
            policy.get_action({})  # a session that never reset replays episode 0


def test_open_loop_against_a_replay_errors_a_float64_recorded_action_beyond_float32s_range_naming_file_and_row(
        dataset, tmp_path):
    """It passed the check as float64 and was scored as the float32 a replay serves: inf, an MSE of inf written as
    null for a run reported complete, exit 0."""
    store_actions_as_float64(dataset)
    edit_rows(data_file(dataset, 0), lambda t: set_action(t, 4, 2, 1e39))
    clean = make_dataset(tmp_path / "clean", lengths=LENGTHS)
    with running_server(ReplayOfAnyCopy(clean, execution_horizon=3)) as server:
        out = tmp_path / "out"
        assert cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--no-plots",
                         "--execution-horizon", "3", "--output-dir", str(out), "--traj-ids", "0", "1"]) == 1
    data = json.loads((out / "results.json").read_text())
    assert list(data["trajectories"]) == ["1"] and data["aggregated"]["avg_mse"] == 0.0
    [errored] = data["errored_trajectories"]
    assert re.search(r"episode_000000\.parquet: column 'action' " + BEYOND_FLOAT32.format(episode=0), errored["error"])


def test_a_float64_recording_whose_error_overflows_errors_the_trajectory_naming_the_figure(dataset, tmp_path):
    """Scored in float64 (a model's run), 1e200 recorded against a prediction of ~1 squared to inf: MSE inf."""
    from gr00t_eval.open_loop import OpenLoopConfig, TrajectoryError, evaluate_trajectory

    store_actions_as_float64(dataset)
    edit_rows(data_file(dataset, 1), lambda t: set_action(t, 4, 2, 1e200))
    policy = ReplayPolicy(make_dataset(tmp_path / "clean", lengths=LENGTHS), execution_horizon=3)
    config = OpenLoopConfig(str(dataset), traj_ids=[1], execution_horizon=3, plot=False)
    with pytest.raises(TrajectoryError, match=r"it cannot be scored: its action MSE is inf: the ground truth and "
                                              r"prediction differ by more than float64 can square"):
        evaluate_trajectory(policy, LeRobotDataset(dataset), 1, config, policy.get_modality_config(), report=lambda _: None)


def test_finite_trajectory_mses_whose_sum_overflows_average_finitely_in_results_json_and_the_report(
        dataset, tmp_path, capsys):
    """Each MSE (1.69e308) passed the finite check, but their plain mean overflowed: results.json said avg_mse null
    (unknown) and the report "inf" for a run reported complete, exit 0."""
    store_actions_as_float64(dataset)
    for episode in (0, 1):
        edit_rows(data_file(dataset, episode), lambda t: set_action(t, 0, 3, 1.3e154))  # gripper at step 0
    with running_server(EchoPolicy()) as server:  # a model's run: scored in float64 (a replay's is float32)
        out = tmp_path / "out"
        assert cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--no-plots",
                         "--steps", "1", "--modality-keys", "gripper", "--output-dir", str(out),
                         "--traj-ids", "0", "1"]) == 0
    data = json.loads((out / "results.json").read_text())
    mses = [data["trajectories"][t]["mse"] for t in ("0", "1")]
    assert data["status"] == "complete" and all(np.isfinite(mses))
    assert data["aggregated"]["avg_mse"] == pytest.approx(1.3e154 ** 2)
    assert data["aggregated"]["avg_mae"] == pytest.approx(1.3e154)
    assert f"Average MSE across all trajs: {data['aggregated']['avg_mse']}" in capsys.readouterr().out


def set_state(table: pa.Table, row: int, index: int, value: float) -> pa.Table:
    states = [list(map(float, r)) for r in table.column("observation.state").to_pylist()]
    states[row][index] = value
    column = pa.array(states, table.schema.field("observation.state").type)
    return table.set_column(table.column_names.index("observation.state"), "observation.state", column)


def test_open_loop_errors_a_recorded_state_that_is_sent_holding_nan_naming_file_and_step(dataset, tmp_path):
    """It was reported as "non-finite values in rows [0]" of the one-row request, not the dataset's file and step."""
    edit_rows(data_file(dataset, 0), lambda t: set_state(t, 3, 0, float("nan")))  # step 3: sent (horizon 3)
    edit_rows(data_file(dataset, 1), lambda t: set_state(t, 4, 0, float("nan")))  # step 4: never sent
    clean = make_dataset(tmp_path / "clean", lengths=LENGTHS)
    with running_server(ReplayOfAnyCopy(clean, execution_horizon=3)) as server:
        out = tmp_path / "out"
        assert cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--no-plots",
                         "--execution-horizon", "3", "--output-dir", str(out), "--traj-ids", "0", "1"]) == 1
    data = json.loads((out / "results.json").read_text())
    assert list(data["trajectories"]) == ["1"]
    [errored] = data["errored_trajectories"]
    assert ("its recorded states cannot be sent to the policy: " in errored["error"] and
            "episode_000000.parquet: column 'observation.state' holds nan at row 3 " in errored["error"])


# --- rows out of step order ---------------------------------------------------------------------------------


@pytest.mark.parametrize("order, where", [
    ([0, 2, 1, 3, 5, 4], "goes from 0 to 2 at row 1"),  # shuffled
    ([0, 1, 1, 2, 3, 4], "goes from 1 to 1 at row 2"),  # a row written twice (and the last step lost)
], ids=["shuffled", "repeated"])
def test_a_replay_server_refuses_rows_out_of_step_order_instead_of_replaying_them_in_file_order(dataset, order, where):
    edit_rows(data_file(dataset, 0), take_rows(order))
    policy = ReplayPolicy(dataset, execution_horizon=3)
    with pytest.raises(DatasetError, match=rf"episode_000000\.parquet: column 'frame_index' of episode 0 {where}"):
        policy.get_action({})  # a session that never reset replays episode 0
    policy.reset({"episode_index": 1})
    np.testing.assert_array_equal(policy.get_action({})[0]["arm"][0][:3], expected_actions(1, 9)["arm"][:3])


def test_v3_rows_reversed_in_their_shared_file_are_refused(tmp_path):
    root = make_dataset(tmp_path / "v3", lengths=LENGTHS, layout="v3.0", episodes_per_file=3)
    [path] = sorted((root / "data").rglob("*.parquet"))
    edit_rows(path, take_rows(list(range(5, -1, -1)) + list(range(6, 19))))  # episode 0's six rows, last first
    with pytest.raises(DatasetError, match=r"column 'frame_index' of episode 0 goes from 5 to 4 at row 1"):
        ReplayPolicy(root, execution_horizon=3).reset({"episode_index": 0})
    np.testing.assert_array_equal(LeRobotDataset(root).episode(1).actions("arm"), expected_actions(1, 9)["arm"])


def test_rows_shuffled_in_a_file_without_frame_index_are_caught_by_their_timestamps(dataset):
    edit_rows(data_file(dataset, 0), lambda t: take_rows([0, 2, 1, 3, 4, 5])(t.drop(["frame_index"])))
    with pytest.raises(DatasetError, match=r"column 'timestamp' of episode 0 steps from 0 s to 0\.2 s at step 0"):
        LeRobotDataset(dataset).episode(0)


def lose_first_row(root: Path, episode: int, drop=()) -> None:
    """Drop an episode's first row (and the columns `drop`), its length in meta/episodes.jsonl corrected to match."""
    edit_rows(data_file(root, episode), lambda t: t.slice(1).drop(list(drop)))
    episodes = root / "meta" / "episodes.jsonl"
    rows = [json.loads(line) for line in episodes.read_text().splitlines()]
    rows[episode]["length"] -= 1
    episodes.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_replay_server_refuses_an_episode_whose_frame_index_does_not_start_at_0(dataset):
    """Its first row lost and the length corrected, row k was paired with video frame k (the frame of step k - 1)."""
    lose_first_row(dataset, 0)
    policy = ReplayPolicy(dataset, execution_horizon=3)
    with pytest.raises(DatasetError, match=r"episode_000000\.parquet: column 'frame_index' of episode 0 starts at 1, "
                                           r"expected 0"):
        policy.get_action({})
    policy.reset({"episode_index": 1})
    np.testing.assert_array_equal(policy.get_action({})[0]["arm"][0][:3], expected_actions(1, 9)["arm"][:3])


def test_an_episode_without_frame_index_whose_timestamps_do_not_start_at_0_is_refused(dataset):
    lose_first_row(dataset, 0, drop=["frame_index"])
    with pytest.raises(DatasetError, match=r"episode_000000\.parquet: column 'timestamp' of episode 0 starts at 0\.1 s, "
                                           r"expected 0"):
        LeRobotDataset(dataset).episode(0)


def number_frames_from_the_dataset_start(table: pa.Table) -> pa.Table:
    """frame_index as some converters write it: the dataset-wide `index`, counting on from the previous episode."""
    return table.set_column(table.column_names.index("frame_index"), "frame_index", table.column("index"))


def test_an_episode_whose_frame_index_counts_on_from_the_previous_episode_is_read_whole(dataset):
    """All its rows there, timestamps from 0 at 1/fps: only frame_index is numbered 6..14 (LeRobot never checks it)."""
    edit_rows(data_file(dataset, 1), number_frames_from_the_dataset_start)
    episode = LeRobotDataset(dataset).episode(1)
    np.testing.assert_array_equal(episode.actions("arm"), expected_actions(1, 9)["arm"])
    decoded = episode.frames("image", [0, 8]).astype(int)  # row k paired with frame k (steps' colours differ by >= 28)
    assert np.abs(decoded - episode_frames(1, 0, 9)[[0, 8]]).max() < 14
    policy = ReplayPolicy(dataset, execution_horizon=3)
    policy.reset({"episode_index": 1})
    np.testing.assert_array_equal(policy.get_action({})[0]["arm"][0][:3], expected_actions(1, 9)["arm"][:3])


def test_an_episode_whose_frame_index_and_timestamps_both_start_late_is_refused_as_missing_its_first_rows(dataset):
    edit_rows(data_file(dataset, 1), lambda t: t.set_column(
        t.column_names.index("timestamp"), "timestamp", pa.array(np.arange(6, 15, dtype=np.float32) / 10)))
    edit_rows(data_file(dataset, 1), number_frames_from_the_dataset_start)
    with pytest.raises(DatasetError, match=r"episode_000001\.parquet: column 'frame_index' of episode 1 starts at 6, "
                                           r"expected 0.*'timestamp' starts at 0\.6 s.*first rows are missing"):
        LeRobotDataset(dataset).episode(1)


# --- a column the file lacks ---------------------------------------------------------------------------------


def test_a_replay_server_does_not_start_on_a_data_file_without_a_column_modality_json_reads(dataset):
    edit_rows(data_file(dataset, 2), lambda t: t.drop(["action"]))
    with pytest.raises(DatasetError, match=r"episode_000002\.parquet: no column 'action' \(episode 2\), which "
                                           r"meta/modality.json reads action key '\w+' from"):
        ReplayPolicy(dataset, execution_horizon=3)


# --- the replay server's memory ----------------------------------------------------------------------------


def test_the_replay_action_cache_stays_within_its_byte_budget_and_reads_dropped_episodes_again(dataset):
    one_episode = sum(v.nbytes for v in expected_actions(1, 9).values())
    policy = ReplayPolicy(dataset, execution_horizon=3, max_cached_bytes=one_episode)
    for _ in range(2):
        for episode, length in enumerate(LENGTHS):
            policy.reset({"episode_index": episode})
            action, _ = policy.get_action({})
            np.testing.assert_array_equal(action["arm"][0][:3], expected_actions(episode, length)["arm"][:3])
            assert policy._cached_bytes <= one_episode and len(policy._actions) == 1
    with pytest.raises(ValueError, match="max_cached_bytes must be an int >= 1"):
        ReplayPolicy(dataset, max_cached_bytes=0)


def test_serve_sets_the_replay_cache_budget_and_refuses_a_bad_one_before_reading_the_dataset(dataset, monkeypatch, capsys,
                                                                                             caplog):
    from gr00t_server import cli as server_cli
    from gr00t_server import server as server_module

    made = {}

    class Captured:
        batching_enabled = False

        def __init__(self, policy, **kwargs):
            made["policy"] = policy

        def start(self):
            pass

    monkeypatch.setattr(server_module, "PolicyServer", Captured)
    args = server_cli.build_parser().parse_args(["serve", "--dataset-path", str(dataset), "--replay-cache-mb", "0.5"])
    server_cli._start_server(args)
    assert made["policy"].max_cached_bytes == 2**19
    for bad in ("0", "-1", "nan", "inf"):
        assert server_cli.main(["serve", "--dataset-path", "/nonexistent", "--replay-cache-mb", bad]) != 0
        assert f"--replay-cache-mb must be in (0, 1048576] MiB, got {float(bad)}" in capsys.readouterr().err
    assert server_cli.main(["serve", "--model-path", "/nonexistent", "--replay-cache-mb", "1"]) != 0
    assert "--replay-cache-mb: ignored; they apply to replay" in caplog.text


# --- the writer after a refused episode ------------------------------------------------------------------


def add(writer: DatasetWriter, episode: int, value: float, task: str, size=(32, 32)) -> int:
    actions = {k: np.full_like(v, value) for k, v in expected_actions(episode, 3).items()}
    return writer.add_episode(frames={"image": episode_frames(episode, 0, 3, size)}, states=expected_states(episode, 3),
                              actions=actions, task=task)


def test_an_episode_the_writer_refused_leaves_no_trace_in_stats_or_tasks(tmp_path, monkeypatch):
    writer = DatasetWriter(tmp_path / "ds", 10)
    add(writer, 0, 1.0, "task A")
    real_write = pq.write_table

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space left"):
        add(writer, 1, 1000.0, "task B (lost)")
    monkeypatch.setattr(pq, "write_table", real_write)  # space freed: the caller goes on
    add(writer, 1, 2.0, "task A")
    root = writer.finalize()
    stats = json.loads((root / "meta" / "stats.json").read_text())["action"]
    assert stats["max"][0] == 2.0 and stats["mean"][0] == pytest.approx(1.5)  # 1000 never reached the dataset
    tasks = [json.loads(line)["task"] for line in (root / "meta" / "tasks.jsonl").read_text().splitlines()]
    assert tasks == ["task A"]
    assert LeRobotDataset(root).num_episodes == 2


def test_a_refused_first_episode_does_not_fix_the_layout_of_the_next(tmp_path, monkeypatch):
    writer = DatasetWriter(tmp_path / "ds", 10)
    with pytest.raises(ValueError, match="has size 31x31; the videos are yuv420p, whose height and width must be even"):
        add(writer, 0, 1.0, "task", size=(31, 31))  # refused before any camera is encoded
    real_write = pq.write_table
    monkeypatch.setattr(pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        add(writer, 0, 1.0, "task", size=(32, 32))  # refused after its layout was taken
    monkeypatch.setattr(pq, "write_table", real_write)
    assert add(writer, 0, 1.0, "task", size=(48, 48)) == 0  # said "earlier episodes had (32, 32)" before
    root = writer.finalize()
    assert LeRobotDataset(root).episode(0).frames("image", [0]).shape == (1, 48, 48, 3)


def test_a_step_column_that_changes_width_is_refused_before_any_file_is_written(tmp_path):
    writer = DatasetWriter(tmp_path / "ds", 10)
    writer.add_episode(frames={}, states=expected_states(0, 3), actions=expected_actions(0, 3), task="t",
                       step_columns={"extra": np.zeros((3, 2), np.float32)})
    with pytest.raises(ValueError, match="column 'extra' has 3 values per step; earlier episodes had 2"):
        writer.add_episode(frames={}, states=expected_states(1, 3), actions=expected_actions(1, 3), task="t",
                           step_columns={"extra": np.zeros((3, 3), np.float32)})
    assert not data_file(tmp_path / "ds", 1).exists()
    writer.finalize()


# --- meta files: named, not a bare conversion error -------------------------------------------------------


def test_a_string_in_stats_json_names_the_file_and_the_statistic(dataset):
    path = dataset / "meta" / "stats.json"
    stats = json.loads(path.read_text())
    stats["action"]["mean"][0] = "a"
    path.write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match=r"stats\.json: 'action\.mean' must be a list of numbers"):
        LeRobotDataset(dataset).group_stats("action", "arm")


def test_an_integer_beyond_float64_in_stats_json_names_the_file_and_the_statistic(dataset):
    """It failed with a bare "OverflowError: int too large to convert to float"."""
    path = dataset / "meta" / "stats.json"
    stats = json.loads(path.read_text())
    stats["action"]["mean"][0] = 10 ** 400
    path.write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match=r"stats\.json: 'action\.mean' must be a list of numbers within float32's "
                                           r"range; it holds an integer beyond float64's range"):
        LeRobotDataset(dataset).group_stats("action", "arm")


@pytest.mark.parametrize("huge", [1e39, 10 ** 39])
def test_a_value_beyond_float32_in_stats_json_is_refused_naming_the_statistic_and_index(dataset, huge):
    """Between float32's and float64's range (1e39) it became inf silently: every unnormalized action inf."""
    path = dataset / "meta" / "stats.json"
    stats = json.loads(path.read_text())
    stats["action"]["std"][1] = huge
    path.write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match=r"stats\.json: 'action\.std' value 1e\+39 at index 1 is beyond float32's "
                                           r"range \(3\.403e\+38\); states and actions are float32"):
        LeRobotDataset(dataset).group_stats("action", "arm")


def test_an_integer_original_key_in_modality_json_is_refused_naming_the_entry(dataset):
    path = dataset / "meta" / "modality.json"
    modality = json.loads(path.read_text())
    modality["state"]["arm"]["original_key"] = 5
    path.write_text(json.dumps(modality))
    with pytest.raises(DatasetError, match=r"modality\.json: 'state\.arm\.original_key' must be a str"):
        LeRobotDataset(dataset)


@pytest.mark.parametrize("damage, message", [  # q01/q99: what the written config normalizes with
    (lambda s: s["action"]["q01"].__setitem__(0, float("nan")), r"non-finite value \(nan\)"),
    (lambda s: s["action"].update(q01=[v + 1.0 for v in s["action"]["q99"]]), r"the range is inverted"),
], ids=["nan-q01", "q01-over-q99"])
def test_make_test_checkpoint_refuses_statistics_serve_would_refuse(dataset, tmp_path, damage, message):
    from gr00t_server.test_checkpoint import spec_from_dataset

    path = dataset / "meta" / "stats.json"
    stats = json.loads(path.read_text())
    damage(stats)
    path.write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=rf"meta/stats\.json: .*{message}.*serve would refuse a checkpoint"):
        spec_from_dataset(dataset)
