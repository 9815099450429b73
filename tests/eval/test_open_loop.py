"""Open-loop evaluation against an in-process policy that echoes the recorded actions (like ReplayPolicy)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from eval.dataset_factory import expected_actions, expected_states, frame_colour, make_dataset
from gr00t_client import BasePolicy, ModalityConfig
from gr00t_eval.cli import build_parser
from gr00t_eval.open_loop import OpenLoopConfig, evaluate_open_loop, history_steps

LANGUAGE_KEY = "annotation.human.action.task_description"
LENGTHS = (6, 9, 4)


class EchoPolicy(BasePolicy):
    """Returns the dataset's actions from its cursor (plus `offset`), advancing by `execution_horizon` per call."""

    def __init__(self, horizon=4, execution_horizon=3, offset=0.0, state_deltas=(0,), video_deltas=(0,)):
        super().__init__(strict=True)
        self.horizon, self.execution_horizon, self.offset = horizon, execution_horizon, offset
        self.state_deltas, self.video_deltas = list(state_deltas), list(video_deltas)
        self.episode, self.step, self.observations = 0, 0, []

    def get_modality_config(self):
        return {
            "video": ModalityConfig(self.video_deltas, ["image", "wrist_image"]),
            "state": ModalityConfig(self.state_deltas, ["arm", "gripper"]),
            "action": ModalityConfig(list(range(self.horizon)), ["arm", "gripper"]),
            "language": ModalityConfig([0], [LANGUAGE_KEY]),
        }

    def reset(self, options=None):
        self.episode, self.step = options["episode_index"], options.get("step_index", 0)
        return {}

    def _get_action(self, observation, options=None):
        self.observations.append(observation)
        length = LENGTHS[self.episode]
        rows = np.clip(self.step + np.arange(self.horizon), 0, length - 1)
        actions = expected_actions(self.episode, length)
        self.step += self.execution_horizon
        return {k: (v[rows] + self.offset)[None].astype(np.float32) for k, v in actions.items()}, {}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("open_loop") / "ds", lengths=LENGTHS)


def run(dataset, tmp_path, policy, **kwargs):
    lines = []
    settings = dict(traj_ids=[0, 1, 2], execution_horizon=3, output_dir=str(tmp_path / "out"))
    settings.update(kwargs)
    result = evaluate_open_loop(policy, OpenLoopConfig(dataset_path=str(dataset), **settings), report=lines.append, progress=False)
    return result, lines


def test_replaying_the_recorded_actions_gives_zero_error(dataset, tmp_path):
    result, lines = run(dataset, tmp_path, EchoPolicy(), plot=False)
    assert result.avg_mse == 0.0 and result.avg_mae == 0.0
    assert [len(t.ground_truth) for t in result.trajectories.values()] == list(LENGTHS)


def test_a_run_asked_not_to_keep_arrays_keeps_only_what_its_results_need(dataset, tmp_path):
    """Every scored trajectory's ground-truth and prediction arrays were held until the run ended: 25.6 GB for 50,000
    trajectories of 1,000 steps of 32 dims, although results.json needs only their errors and step counts."""
    config = OpenLoopConfig(dataset_path=str(dataset), traj_ids=[0, 1, 2], execution_horizon=3, plot=False,
                            output_dir=str(tmp_path / "out"))
    result = evaluate_open_loop(EchoPolicy(offset=0.5), config, report=lambda _: None, progress=False, keep_arrays=False)
    assert all(t.ground_truth is None and t.prediction is None for t in result.trajectories.values())
    assert [t.steps for t in result.trajectories.values()] == list(LENGTHS)
    assert result.avg_mse == pytest.approx(0.25)
    written = json.loads(result.results_path.read_text())
    kept, _ = run(dataset, tmp_path / "kept", EchoPolicy(offset=0.5), plot=False)
    assert all(t.ground_truth.shape == (t.steps, 4) for t in kept.trajectories.values())  # the default keeps them
    assert ([written["trajectories"][str(t)]["steps"] for t in range(3)] ==
            [json.loads(kept.results_path.read_text())["trajectories"][str(t)]["steps"] for t in range(3)] == list(LENGTHS))


def test_console_lines_keep_the_reference_wording(dataset, tmp_path):
    _, lines = run(dataset, tmp_path, EchoPolicy(offset=1.0), traj_ids=[1], plot=False)
    assert "MSE for trajectory 1: 1.0, MAE: 1.0" in lines
    assert "Average MSE across all trajs: 1.0" in lines
    assert "Average MAE across all trajs: 1.0" in lines
    assert "Using 9 steps (requested: 200, trajectory length: 9)" in lines


def test_an_offset_prediction_gives_exactly_that_error_overall_per_key_and_per_dim(dataset, tmp_path):
    result, _ = run(dataset, tmp_path, EchoPolicy(offset=0.5), traj_ids=[0], plot=False)
    errors = result.trajectories[0].errors
    assert errors.mse == pytest.approx(0.25) and errors.mae == pytest.approx(0.5)
    assert set(errors.per_key) == {"arm", "gripper"}
    assert errors.per_dim_mae == pytest.approx([0.5] * 4)


def test_the_policy_is_queried_every_execution_horizon_steps_up_to_the_step_cap(dataset, tmp_path):
    policy = EchoPolicy(execution_horizon=2)
    result, _ = run(dataset, tmp_path, policy, traj_ids=[1], steps=5, execution_horizon=2, plot=False)
    trajectory = result.trajectories[1]
    assert trajectory.inference_steps == [0, 2, 4]
    assert trajectory.ground_truth.shape == (5, 4) and trajectory.errors.mse == 0.0
    states = [obs["state"]["arm"][0, -1] for obs in policy.observations]
    assert np.allclose(states, expected_states(1, 9)["arm"][[0, 2, 4]])


def test_history_before_the_episode_start_repeats_the_first_frame(dataset, tmp_path):
    policy = EchoPolicy(state_deltas=(-2, 0), video_deltas=(-1, 0))
    run(dataset, tmp_path, policy, traj_ids=[0], plot=False)
    first = policy.observations[0]
    arm = expected_states(0, 6)["arm"]
    assert np.allclose(first["state"]["arm"][0], arm[[0, 0]])
    video = first["video"]["image"][0].astype(int)
    assert video.shape == (2, 32, 32, 3)
    assert np.abs(video[:, 16, 16] - frame_colour(0, 0, 0).astype(int)).max() <= 6
    later = policy.observations[1]  # step 3: rows 1 and 3
    assert np.allclose(later["state"]["arm"][0], arm[[1, 3]])
    assert history_steps(0, [-15, 0], 6).tolist() == [0, 0]


def test_the_language_comes_from_the_task_list(dataset, tmp_path):
    policy = EchoPolicy()
    run(dataset, tmp_path, policy, traj_ids=[1], plot=False)
    assert policy.observations[0]["language"][LANGUAGE_KEY] == [["open the drawer"]]


def test_flat_observations_for_a_sim_wrapper_server(dataset, tmp_path):
    class FlatEcho(EchoPolicy):
        def check_observation(self, observation):
            assert observation["video.image"].shape == (1, 1, 32, 32, 3)
            assert observation["state.arm"].shape == (1, 1, 3)
            assert observation[LANGUAGE_KEY] == ["pick the red cube"]

        def _get_action(self, observation, options=None):
            action, info = super()._get_action(observation, options)
            return {f"action.{k}": v for k, v in action.items()}, info

        def check_action(self, action):
            pass

    result, _ = run(dataset, tmp_path, FlatEcho(), traj_ids=[0], observation_format="flat", plot=False)
    assert result.avg_mse == 0.0


def test_modality_keys_select_which_action_keys_are_compared(dataset, tmp_path):
    result, _ = run(dataset, tmp_path, EchoPolicy(offset=2.0), traj_ids=[2], modality_keys=["gripper"], plot=False)
    trajectory = result.trajectories[2]
    assert trajectory.ground_truth.shape == (4, 1)
    assert list(trajectory.errors.per_key) == ["gripper"]


class GripperOffsetPolicy(EchoPolicy):
    """EchoPolicy whose gripper actions alone are off by 1."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        action["gripper"] = action["gripper"] + np.float32(1.0)
        return action, info


@pytest.mark.parametrize("keys", [["arm", "gripper"], ["gripper", "arm"]])
def test_per_dim_figures_are_labelled_with_their_key_and_value_in_the_order_scored(dataset, tmp_path, keys):
    """per_dim followed the scored keys' order (--modality-keys, or the policy's) unlabelled: with the keys given the
    other way round the same run's per_dim[0] was the gripper's error instead of the arm's first value's."""
    run(dataset, tmp_path, GripperOffsetPolicy(), traj_ids=[1], modality_keys=keys, plot=False)
    per_dim = json.loads((tmp_path / "out" / "results.json").read_text())["trajectories"]["1"]["per_dim"]
    dims = {key: expected_actions(1, LENGTHS[1])[key].shape[1] for key in keys}
    assert per_dim["labels"] == [f"{key}[{i}]" for key in keys for i in range(dims[key])]
    for label, mse in zip(per_dim["labels"], per_dim["mse"]):
        assert mse == pytest.approx(1.0 if label.startswith("gripper[") else 0.0), (label, per_dim)


def test_ids_past_the_datasets_end_are_refused_before_any_trajectory(dataset, tmp_path):
    with pytest.raises(ValueError, match=r"traj_ids \(--traj-ids\) \[7\] are not in the dataset .*: it has 3 episodes "
                                         r"\(ids 0 to 2\)"):
        run(dataset, tmp_path, EchoPolicy(), traj_ids=[7, 0], plot=False)
    assert not (tmp_path / "out" / "results.json").exists()


def test_one_plot_per_trajectory_and_a_results_file(dataset, tmp_path):
    result, _ = run(dataset, tmp_path, EchoPolicy(offset=0.25), traj_ids=[0, 2])
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "traj_0.jpeg", "traj_2.jpeg"]
    assert (out / "traj_0.jpeg").read_bytes()[:2] == b"\xff\xd8"  # JPEG magic
    data = json.loads((out / "results.json").read_text())
    assert set(data["trajectories"]) == {"0", "2"}
    assert data["trajectories"]["2"]["per_dim"]["mae"] == pytest.approx([0.25] * 4)
    assert data["trajectories"]["0"]["inference_steps"] == [0, 3]
    assert data["aggregated"]["avg_mae"] == pytest.approx(0.25)


@pytest.mark.parametrize("ids", [range(3), {0: "a", 1: "b", 2: "c"}.keys(), map(int, "012"), np.arange(3)],
                         ids=["range", "dict_keys", "map", "numpy"])
def test_traj_ids_given_as_any_iterable_of_ints_are_run_and_written_as_a_list(dataset, tmp_path, ids):
    result, _ = run(dataset, tmp_path, EchoPolicy(), traj_ids=ids, plot=False)
    assert list(result.trajectories) == [0, 1, 2]
    assert json.loads(result.results_path.read_text())["config"]["traj_ids"] == [0, 1, 2]


@pytest.mark.parametrize("ids", [[True, 2], [0, 1.0], ["1"], 3])
def test_traj_ids_that_are_not_ints_are_refused_naming_the_field(dataset, ids):
    with pytest.raises(ValueError, match="traj_ids must"):
        OpenLoopConfig(dataset_path=str(dataset), traj_ids=ids)


def test_numpy_int_steps_and_execution_horizon_are_taken_as_ints(dataset, tmp_path):
    result, _ = run(dataset, tmp_path, EchoPolicy(execution_horizon=2), traj_ids=[1], steps=np.int64(5),
                    execution_horizon=np.int32(2), plot=False)
    assert result.trajectories[1].inference_steps == [0, 2, 4]
    saved = json.loads(result.results_path.read_text())["config"]
    assert (saved["steps"], saved["execution_horizon"]) == (5, 2)


def test_an_output_dir_holding_an_earlier_runs_results_is_refused_before_any_query(dataset, tmp_path):
    run(dataset, tmp_path, EchoPolicy(offset=1.0), traj_ids=[0, 1, 2])
    policy = EchoPolicy()
    with pytest.raises(ValueError, match=r"output_dir .*out holds an earlier run's results.json; expected a new or empty"):
        run(dataset, tmp_path, policy, traj_ids=[0])
    assert policy.observations == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json", "traj_0.jpeg", "traj_1.jpeg", "traj_2.jpeg"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["config"]["traj_ids"] == [0, 1, 2]


def test_without_output_dir_each_run_gets_a_new_dated_folder(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("gr00t_eval.open_loop.DEFAULT_OUTPUT_DIR", str(tmp_path / "base"))
    first = evaluate_open_loop(EchoPolicy(offset=1.0), OpenLoopConfig(str(dataset), traj_ids=[0, 1], execution_horizon=3),
                               report=lambda line: None, progress=False)
    lines = []
    second = evaluate_open_loop(EchoPolicy(), OpenLoopConfig(str(dataset), traj_ids=[0], execution_horizon=3),
                                report=lines.append, progress=False)
    assert first.results_path.parent != second.results_path.parent
    assert second.results_path.parent.parent.parent == tmp_path / "base"  # base/YYYY-MM-DD/HH-MM-SS_<dataset>
    assert re.fullmatch(r"\d\d-\d\d-\d\d_ds(-\d+)?", second.results_path.parent.name)  # -2: the same second
    assert sorted(p.name for p in second.results_path.parent.iterdir()) == ["results.json", "traj_0.jpeg"]
    assert f"Output directory: {second.results_path.parent}" in lines
    assert json.loads(first.results_path.read_text())["aggregated"]["avg_mse"] == pytest.approx(1.0)


class RenamedCameras(EchoPolicy):
    """Names its cameras otherwise than the dataset does: they are paired with the dataset's by position."""

    def get_modality_config(self):
        return {**super().get_modality_config(), "video": ModalityConfig(self.video_deltas, ["cam_left", "cam_right"])}


def test_keys_matched_by_position_are_warned_of_once_in_every_run(dataset, tmp_path, caplog):
    counts = []
    for number in range(2):  # a second run in the same process (a notebook, a sweep) is told again
        caplog.clear()
        with caplog.at_level("WARNING", logger="gr00t_eval"):
            run(dataset, tmp_path, RenamedCameras(), traj_ids=[0, 1], plot=False, output_dir=str(tmp_path / f"out{number}"))
        counts.append(sum("matching by position: cam_left <- image, cam_right <- wrist_image" in r.getMessage()
                          for r in caplog.records))
    assert counts == [1, 1]


@pytest.mark.parametrize("style", ["kebab", "snake"])
def test_open_loop_flags_in_kebab_and_snake_spelling(style):
    names = ["dataset-path", "embodiment-tag", "traj-ids", "execution-horizon", "modality-keys", "api-token", "timeout-ms", "output-dir"]
    flag = {n: "--" + (n if style == "kebab" else n.replace("-", "_")) for n in names}
    args = build_parser().parse_args([
        "open-loop", flag["dataset-path"], "/d", flag["embodiment-tag"], "NEW_EMBODIMENT", "--host", "h", "--port", "7",
        flag["traj-ids"], "1", "2", "--steps", "50", flag["execution-horizon"], "4", flag["modality-keys"], "arm",
        flag["api-token"], "t", flag["timeout-ms"], "99", flag["output-dir"], "/o",
    ])
    assert (args.dataset_path, args.host, args.port, args.traj_ids, args.steps) == ("/d", "h", 7, [1, 2], 50)
    assert (args.execution_horizon, args.modality_keys, args.api_token, args.timeout_ms, args.output_dir) == (4, ["arm"], "t", 99, "/o")


def test_action_horizon_is_an_alias_of_execution_horizon():
    for flag in ("--action-horizon", "--action_horizon"):
        assert build_parser().parse_args(["open-loop", "--dataset-path", "/d", flag, "8"]).execution_horizon == 8
    args = build_parser().parse_args(["open-loop", "--dataset-path", "/d"])
    assert (args.execution_horizon, args.traj_ids, args.steps, args.output_dir) == (None, [0], 200, None)  # the policy's horizon, a dated dir



@pytest.mark.parametrize("spelling", [["--action-horizon", "8"], ["--action-horizon=8"], ["--action_horizon=8"]])
def test_every_spelling_of_action_horizon_is_warned_as_deprecated(spelling, tmp_path, caplog):
    from gr00t_eval import cli

    caplog.set_level("WARNING")
    code = cli.main(["open-loop", "--dataset-path", str(tmp_path / "none"), *spelling])
    assert code == 2  # then refused: not a dataset
    assert "--action-horizon is deprecated; use --execution-horizon" in caplog.text


def test_execution_horizon_and_action_horizon_with_different_values_are_refused(tmp_path, capsys):
    from gr00t_eval import cli

    code = cli.main(["open-loop", "--dataset-path", str(tmp_path / "none"), "--execution-horizon", "8",
                     "--action-horizon=4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "given twice with different values (--execution-horizon 8, --action-horizon 4)" in err, err


# --- --denoising-steps and the server behind the client ---------------------------------------------------------


def _served_by_reference(policy):
    pytest.importorskip("msgpack_numpy")  # the reference peer speaks msgpack-numpy; the lowest-versions venv lacks it
    from reference_peer import RefModalityConfig, ReferenceServer

    configs = {k: RefModalityConfig(v.to_json_dict()) for k, v in policy.get_modality_config().items()}
    handlers = {"get_action": policy.get_action, "reset": policy.reset, "get_modality_config": lambda: configs}
    return ReferenceServer(handlers)


def test_denoising_steps_against_a_reference_server_are_warned_and_recorded_not_applied(dataset, tmp_path, caplog):
    from gr00t_client import PolicyClient

    with _served_by_reference(EchoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        result, _ = run(dataset, tmp_path, client, denoising_steps=2, plot=False)
    saved = json.loads(result.results_path.read_text())
    assert saved["settings_not_applied"] == {"denoising_steps": 2}
    assert any("--denoising-steps 2" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    sent = [(r.get("data") or {}).get("options") for r in server.requests if r.get("endpoint") == "get_action"]
    assert sent and all(options is None for options in sent)  # as upstream's open_loop_eval: not sent in server mode


def test_denoising_steps_against_a_replay_server_are_warned_and_recorded_not_applied(dataset, tmp_path, caplog):
    """A gr00t-server replaying a dataset ignores denoising_steps; results.json recorded it as applied."""
    pytest.importorskip("gr00t_server")
    from gr00t_client import PolicyClient
    from gr00t_server.policies import ReplayPolicy
    from serving import running_server

    with running_server(ReplayPolicy(str(dataset), execution_horizon=3)) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        result, _ = run(dataset, tmp_path, client, traj_ids=[0], denoising_steps=2, plot=False)
    assert json.loads(result.results_path.read_text())["settings_not_applied"] == {"denoising_steps": 2}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "--denoising-steps 2" in r.getMessage()]
    assert warned and "replays a recorded dataset" in warned[0]


def test_denoising_steps_reach_a_gr00t_server_and_are_recorded_applied(dataset, tmp_path):
    pytest.importorskip("gr00t_server")  # a gr00t-server is the point; the eval-only venv has none
    from gr00t_client import PolicyClient
    from serving import running_server

    seen = []

    class OptionsSeen(EchoPolicy):
        def work_limits(self):  # as Gr00tPolicy's: get_server_info reports the cap, the server's sign it applies it
            return {"max_denoising_steps": 16}

        def _get_action(self, observation, options=None):
            seen.append(options)
            return super()._get_action(observation, options)

    with running_server(OptionsSeen()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        result, _ = run(dataset, tmp_path, client, traj_ids=[0], denoising_steps=2, plot=False)
    assert json.loads(result.results_path.read_text())["settings_not_applied"] == {}
    assert seen and all(options == {"denoising_steps": 2} for options in seen)


def test_denoising_steps_against_a_gr00t_server_reporting_no_max_denoising_steps_are_warned_and_recorded_not_applied(
        dataset, tmp_path, caplog):
    """An older gr00t-server reports no max_denoising_steps, so it is not known to apply the option:
    results.json recorded settings_not_applied {} with config.denoising_steps 2, scores reported as 2-step ones."""
    pytest.importorskip("gr00t_server")
    from gr00t_client import PolicyClient
    from serving import running_server

    with running_server(EchoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert "max_denoising_steps" not in client.get_server_info()["limits"]
        result, _ = run(dataset, tmp_path, client, traj_ids=[0], denoising_steps=2, plot=False)
    saved = json.loads(result.results_path.read_text())
    assert saved["settings_not_applied"] == {"denoising_steps": 2} and saved["config"]["denoising_steps"] == 2
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "--denoising-steps 2" in r.getMessage()]
    assert warned and "does not report max_denoising_steps" in warned[0]


def test_denoising_steps_against_a_gr00t_server_reporting_no_cap_are_warned_as_not_sent_not_as_ignored_by_it(
        dataset, tmp_path, caplog):
    """A gr00t-server of 2026-12-02 to 12-04 applies options['denoising_steps'] but reports no max_denoising_steps: the
    warning said it ignores the option. It may or may not apply it; the run does not send it, and says so."""
    pytest.importorskip("gr00t_server")
    from gr00t_client import PolicyClient
    from serving import running_server

    seen = []

    class OptionsSeen(EchoPolicy):
        def _get_action(self, observation, options=None):
            seen.append(options)
            return super()._get_action(observation, options)

    with running_server(OptionsSeen()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        result, _ = run(dataset, tmp_path, client, traj_ids=[0], denoising_steps=2, plot=False)
    assert seen and all(options is None for options in seen)  # its scores are at the server's default steps
    assert json.loads(result.results_path.read_text())["settings_not_applied"] == {"denoising_steps": 2}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "--denoising-steps 2" in r.getMessage()]
    assert warned and "may or may not apply it" in warned[0] and "not sent" in warned[0]
    assert "ignores the option" not in warned[0]


def test_an_open_loop_run_against_a_server_that_reports_no_checkpoint_identity_warns_once_that_a_restart_goes_unnoticed(
        dataset, tmp_path, caplog):
    """An older gr00t-server reports no policy_identity: a restart with another checkpoint of the same configs during
    the run cannot be told apart from the first, and nothing said so."""
    pytest.importorskip("gr00t_server")
    from gr00t_client import PolicyClient
    from serving import running_server

    class Identified(EchoPolicy):
        def identity(self):
            return {"kind": "test", "checkpoint": "a"}

    for policy, expected in ((EchoPolicy(), 1), (Identified(), 0)):  # no identity(): as an older server's
        caplog.clear()
        with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
            with caplog.at_level("WARNING"):
                run(dataset, tmp_path / type(policy).__name__, client, traj_ids=[0], plot=False)
        warned = [r.getMessage() for r in caplog.records
                  if r.levelname == "WARNING" and "reports no checkpoint identity" in r.getMessage()]
        assert len(warned) == expected, (type(policy).__name__, warned)
        assert all("upgrade gr00t-server" in message and "cannot be detected" in message for message in warned)
