"""open-loop when things go wrong: a policy that does not follow the trajectory, two runs into one directory,
empty episodes and repeated --modality-keys. Real replay servers on loopback, real datasets, the real CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from eval.dataset_factory import expected_actions, make_dataset
from eval.scale_fixtures import free_port, names_in_one_second
from gr00t_eval import cli, open_loop_cli
from gr00t_eval.dataset import DatasetWriter
from gr00t_server.policies.replay import ReplayPolicy
from serving import ReplayOfAnyCopy, running_server, stopped_while_it_hangs

LENGTHS = (6, 9, 4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("faults") / "full", lengths=LENGTHS)


@pytest.fixture(scope="module")
def server(dataset):
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as running:
        yield running


class ReplayNamingNoHorizon(ReplayPolicy):
    """A replay whose identity names no execution_horizon (an older server's): only its replies tell its horizon."""

    def identity(self):
        return {k: v for k, v in super().identity().items() if k != "execution_horizon"}


@pytest.fixture(scope="module")
def older_server(dataset):
    with running_server(ReplayNamingNoHorizon(dataset, execution_horizon=4)) as running:
        yield running


def open_loop(dataset, port, out, *extra):
    return cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(port), "--no-plots",
                     "--execution-horizon", "4", "--output-dir", str(out), *extra])


def results(out) -> dict:
    return json.loads((Path(out) / "results.json").read_text())


# --- a policy that does not follow the trajectory -------------------------------------------------------


@pytest.fixture(scope="module")
def stale_server(tmp_path_factory):
    """A replay server of a stale copy of the dataset: only its first two episodes (the same values). It names no
    dataset hashes (a replay that does is refused before any trajectory: test_open_loop_replay_dataset)."""
    stale = make_dataset(tmp_path_factory.mktemp("faults") / "stale", lengths=LENGTHS[:2])
    with running_server(ReplayOfAnyCopy(stale, execution_horizon=4)) as running:
        yield running


def test_a_trajectory_whose_policy_reset_fails_is_errored_not_averaged(dataset, stale_server, tmp_path, capsys):
    code = open_loop(dataset, stale_server.port, tmp_path / "out", "--traj-ids", "0", "1", "2")
    out = capsys.readouterr().out
    assert code == 1
    data = results(tmp_path / "out")
    assert sorted(data["trajectories"]) == ["0", "1"]
    assert data["aggregated"]["n_trajectories"] == 2 and data["aggregated"]["n_errors"] == 1
    assert data["aggregated"]["avg_mse"] == 0.0  # only the two replayed trajectories
    [errored] = data["errored_trajectories"]
    assert errored["traj_id"] == 2 and "policy reset failed" in errored["error"] and "out of range" in errored["error"]
    assert "trajectory 2 errored: policy reset failed" in out
    assert "INCOMPLETE: 1 of 3 trajectories errored" in out
    assert "exit status 1 because trajectories errored" in out


def test_allow_errors_exits_zero_but_still_lists_the_errored_trajectory(dataset, stale_server, tmp_path):
    assert open_loop(dataset, stale_server.port, tmp_path / "out", "--traj-ids", "0", "2", "--allow-errors") == 0
    data = results(tmp_path / "out")
    assert list(data["trajectories"]) == ["0"] and [e["traj_id"] for e in data["errored_trajectories"]] == [2]


def test_a_policy_reporting_another_step_errors_the_trajectory_instead_of_scoring_it(dataset, older_server, tmp_path,
                                                                                     capsys):
    # The server advances 4 steps per call; evaluating every 2 steps compares misaligned chunks. (A replay whose
    # identity names its horizon is refused before any trajectory: test_audit11_open_loop.)
    code = open_loop(dataset, older_server.port, tmp_path / "out", "--traj-ids", "1", "--execution-horizon", "2")
    assert code == 1
    assert "INCOMPLETE: 1 of 1 trajectories errored; nothing was scored" in capsys.readouterr().out  # no "averages above"
    data = results(tmp_path / "out")
    assert data["trajectories"] == {} and data["aggregated"]["avg_mse"] is None
    [errored] = data["errored_trajectories"]
    assert errored["traj_id"] == 1
    assert "reports step 4 while the evaluation is at step 2" in errored["error"]
    assert "--execution-horizon 2" in errored["error"]


def test_a_replay_done_early_because_it_advances_more_steps_per_call_names_the_horizon_mismatch(dataset, older_server,
                                                                                              tmp_path):
    # Episode 2 has 4 steps: the server (4 steps per call) is done after its first reply, this run queries step 2 too.
    assert open_loop(dataset, older_server.port, tmp_path / "out", "--traj-ids", "2", "--execution-horizon", "2") == 1
    [errored] = results(tmp_path / "out")["errored_trajectories"]
    assert "the server advances 4 steps per call and this run 2" in errored["error"]
    assert "or run with --execution-horizon 4" in errored["error"]
    assert "does not follow this recording" not in errored["error"]


@pytest.fixture(scope="module")
def trimmed_copy(tmp_path_factory):
    """Another copy of the dataset whose episode 0 was trimmed to 4 of its 6 steps (the same values up to there)."""
    return make_dataset(tmp_path_factory.mktemp("faults") / "trimmed", lengths=(4, *LENGTHS[1:]))


def test_a_replay_of_an_episode_of_another_length_errors_the_trajectory_instead_of_scoring_its_padding(
        dataset, trimmed_copy, tmp_path):
    """Every reply said episode_length 4 and episode_done, yet all 6 steps were scored against the replay's padding of
    its last action: a plausible MSE, status complete, exit 0."""
    with running_server(ReplayOfAnyCopy(trimmed_copy, execution_horizon=4)) as trimmed:
        code = open_loop(dataset, trimmed.port, tmp_path / "out", "--traj-ids", "0", "1")
    data = results(tmp_path / "out")
    assert (code, data["status"], list(data["trajectories"])) == (1, "complete", ["1"])
    assert data["trajectories"]["1"]["mse"] == 0.0
    [errored] = data["errored_trajectories"]
    assert errored["traj_id"] == 0
    assert ("the policy does not follow this recording: it replays an episode of 4 steps, the dataset's has 6"
            in errored["error"])


class LengthlessReplay(ReplayOfAnyCopy):
    """A replay that reports `episode_done` but not `episode_length` (a server of another make)."""

    def reset(self, options=None):
        return {k: v for k, v in super().reset(options).items() if k != "episode_length"}

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        return action, {k: v for k, v in info.items() if k != "episode_length"}


def test_a_replay_reporting_its_episode_done_before_the_last_query_errors_the_trajectory(dataset, trimmed_copy, tmp_path):
    with running_server(LengthlessReplay(trimmed_copy, execution_horizon=2)) as trimmed:
        code = open_loop(dataset, trimmed.port, tmp_path / "out", "--traj-ids", "0", "1", "--execution-horizon", "2")
    data = results(tmp_path / "out")
    assert (code, list(data["trajectories"])) == (1, ["1"]) and data["trajectories"]["1"]["mse"] == 0.0
    [errored] = data["errored_trajectories"]
    assert errored["traj_id"] == 0
    assert ("it reports its episode done at step 2, and the dataset's episode of 6 steps is queried up to step 4"
            in errored["error"])


# --- two runs into one output directory -------------------------------------------------------------------


class GatedReplay(ReplayPolicy):
    """A ReplayPolicy whose first get_action waits until `gate` is set (a slow model, held still)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate, self.waiting = threading.Event(), threading.Event()

    def _get_action(self, observation, options=None):
        self.waiting.set()
        self.gate.wait(30)
        return super()._get_action(observation, options)


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_second_run_into_the_directory_of_a_running_one_is_refused_naming_it(dataset, tmp_path, capsys, extra):
    policy = GatedReplay(dataset, execution_horizon=4)
    out = tmp_path / "shared"
    codes = {}
    with running_server(policy) as gated:
        first = threading.Thread(target=lambda: codes.setdefault("first", open_loop(dataset, gated.port, out, "--traj-ids", "0")))
        first.start()
        try:
            assert policy.waiting.wait(30), "the first run never reached the server"
            codes["second"] = open_loop(dataset, gated.port, out, "--traj-ids", "1", *extra)
        finally:
            policy.gate.set()
            first.join(60)
    err = capsys.readouterr().err
    assert codes == {"first": 0, "second": 2}
    assert f"--output-dir {out} is in use: the run that claimed it is still running (pid {os.getpid()} on host " in err
    assert "--overwrite" not in err  # following that advice would have deleted the running run's files
    data = results(out)
    assert data["config"]["traj_ids"] == [0] and list(data["trajectories"]) == ["0"]
    assert json.loads((out / cli.OPEN_LOOP_RUN_FILENAME).read_text())["config"]["traj_ids"] == [0]


def test_claiming_a_directory_twice_is_refused_naming_the_claim(tmp_path):
    from gr00t_eval.run_claim import claim_output_dir
    from gr00t_eval.run_dir import OutputDirError

    claim_output_dir(tmp_path, "open_loop_run.json", {"kind": "open_loop"})
    with pytest.raises(OutputDirError, match="taken by another run.*open_loop_run.json"):
        claim_output_dir(tmp_path, "open_loop_run.json", {"kind": "open_loop"})
    # no partial file left beside it: the claim and the alive file its holder locks (run_claim.holding_claim) only
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gr00t_open_loop_run.json.alive", "open_loop_run.json"]


def test_a_finished_run_leaves_its_settings_and_a_rerun_needs_overwrite(dataset, server, tmp_path):
    out = tmp_path / "out"
    assert open_loop(dataset, server.port, out, "--traj-ids", "0") == 0
    assert sorted(p.name for p in out.iterdir()) == [".gr00t_open_loop_run.json.alive", cli.OPEN_LOOP_RUN_FILENAME,
                                                     "results.json"]
    assert open_loop(dataset, server.port, out, "--traj-ids", "1") == 2
    assert open_loop(dataset, server.port, out, "--traj-ids", "1", "--overwrite") == 0
    assert list(results(out)["trajectories"]) == ["1"]


def test_the_claim_records_who_ran_and_that_the_run_finished(dataset, server, tmp_path):
    before = time.time()
    assert open_loop(dataset, server.port, tmp_path / "out", "--traj-ids", "0") == 0
    claim = json.loads((tmp_path / "out" / cli.OPEN_LOOP_RUN_FILENAME).read_text())["claim"]
    assert claim["pid"] == os.getpid() and claim["hostname"] == socket.gethostname()
    assert before - 1 <= claim["started_unix"] <= time.time() and claim["started"].endswith("Z")
    assert claim["finished"] is True and claim["outcome"] == "complete" and claim["ended"] >= claim["started"]


def test_a_run_that_failed_in_this_process_does_not_hold_its_directory(dataset, server, tmp_path, capsys):
    out = tmp_path / "out"
    assert open_loop(dataset, free_port(), out, "--timeout-ms", "300") == 2  # no server there
    assert not out.exists()  # the folder is claimed once the server answered: no claim, the same command may run again
    assert open_loop(dataset, server.port, out, "--traj-ids", "0") == 0


OPEN_LOOP_CLI = [sys.executable, "-c", "import sys; from gr00t_eval.cli import main; sys.exit(main())"]


def test_overwrite_takes_the_directory_of_a_run_killed_with_sigkill_only_once_it_is_gone(dataset, server, tmp_path, capsys):
    policy = GatedReplay(dataset, execution_horizon=4)
    out = tmp_path / "out"
    with running_server(policy) as gated:
        killed = subprocess.Popen([*OPEN_LOOP_CLI, "open-loop", "--dataset-path", str(dataset), "--port", str(gated.port),
                                   "--no-plots", "--execution-horizon", "4", "--output-dir", str(out)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert policy.waiting.wait(60), "the run never reached the server"
            assert open_loop(dataset, server.port, out, "--overwrite") == 2
            err = capsys.readouterr().err
            assert f"still running (pid {killed.pid} on host {socket.gethostname()}" in err and "--overwrite" not in err
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait(30)
            policy.gate.set()
    assert not json.loads((out / cli.OPEN_LOOP_RUN_FILENAME).read_text())["claim"]["finished"]  # a stale claim
    assert open_loop(dataset, server.port, out, "--traj-ids", "1") == 2  # still not empty: --overwrite is needed
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert open_loop(dataset, server.port, out, "--traj-ids", "1", "--overwrite") == 0
    assert list(results(out)["trajectories"]) == ["1"]


def test_an_interrupted_run_whose_terminal_has_gone_exits_130_with_its_results(dataset, tmp_path):
    """stdout and stderr both on a terminal that went away (`& disown`, then the ssh session ended): the last line
    ("... interrupted") raised EIO on stderr, and the run, its results saved, exited 1 instead of 130."""
    import pty

    policy = GatedReplay(dataset, execution_horizon=4)
    master, terminal = pty.openpty()
    os.close(master)
    out = tmp_path / "out"
    with running_server(policy) as gated:
        run = subprocess.Popen([*OPEN_LOOP_CLI, "open-loop", "--dataset-path", str(dataset), "--port", str(gated.port),
                                "--no-plots", "--execution-horizon", "4", "--output-dir", str(out)],
                               stdout=terminal, stderr=terminal, start_new_session=True)
        os.close(terminal)
        try:
            assert policy.waiting.wait(60), "the run never reached the server"
            run.send_signal(signal.SIGINT)
            code = run.wait(60)
        finally:
            policy.gate.set()
    assert code == 130
    assert results(out)["status"] == "interrupted"


def test_an_unfinished_claim_from_another_host_is_refused_even_with_overwrite(dataset, server, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / cli.OPEN_LOOP_RUN_FILENAME).write_text(json.dumps({"claim": {
        "pid": 4242, "hostname": "another-machine", "started": "2026-01-01T10:00:00Z", "finished": False}}))
    assert open_loop(dataset, server.port, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "pid 4242 on host another-machine" in err and "cannot check whether it still runs" in err
    # the claim file holds the run's settings: freed, not deleted
    assert f'set "finished": true in the "claim" record of {out / cli.OPEN_LOOP_RUN_FILENAME}' in err, err
    assert [p.name for p in out.iterdir()] == [cli.OPEN_LOOP_RUN_FILENAME]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc")
def test_a_live_process_that_started_after_the_claim_is_not_its_holder(tmp_path):
    from gr00t_eval.run_claim import ClaimHolder, holder_alive

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def holder(started_unix):
            return ClaimHolder(other.pid, socket.gethostname(), "then", started_unix, finished=False)

        assert holder_alive(holder(time.time()))
        assert not holder_alive(holder(time.time() - 3600))  # the claimant died and its pid went to `other`
    finally:
        other.kill()
        other.wait(30)
    assert not holder_alive(holder(time.time()))


def test_on_windows_a_claims_process_is_never_signalled_and_the_claim_counts_as_live(monkeypatch):
    """os.kill(pid, 0) on Windows sends Ctrl-C to that process (CTRL_C_EVENT is 0), or fails and the claim was taken
    over from a live run."""
    from gr00t_eval import run_claim

    def no_kill(*args):
        raise AssertionError("os.kill called on Windows")

    monkeypatch.setattr(run_claim.os, "name", "nt")
    monkeypatch.setattr(run_claim.os, "kill", no_kill)
    holder = run_claim.ClaimHolder(os.getpid() + 100000, socket.gethostname(), "then", time.time(), finished=False)
    assert run_claim.holder_alive(holder)


def test_runs_without_output_dir_started_in_the_same_second_get_a_directory_each(dataset, server, tmp_path, monkeypatch):
    n_runs = 6
    dated = names_in_one_second(monkeypatch, n_runs)  # every run picks its first name before any run creates its directory
    monkeypatch.setattr(open_loop_cli, "DEFAULT_OPEN_LOOP_BASE", str(tmp_path / "base"))
    codes = []
    args = ["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--no-plots", "--execution-horizon", "4"]
    runs = [threading.Thread(target=lambda: codes.append(cli.main(args))) for _ in range(n_runs)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(60)
    assert codes == [0] * n_runs
    made = sorted(p.name for p in (tmp_path / "base").glob("*/*"))
    first = dated(tmp_path / "base", dataset.name, now=1_700_000_000.0).name
    assert made == sorted([first] + [f"{first}-{n}" for n in range(2, n_runs + 1)])
    assert all((run / "results.json").is_file() for run in (tmp_path / "base").glob("*/*"))


# --- empty episodes ----------------------------------------------------------------------------------------


def cut_to_empty(root: Path, position: int) -> None:
    """Make episode `position` 0 steps long, as other tools can write it (no rows, length 0)."""
    data = root / "data" / "chunk-000" / f"episode_{position:06d}.parquet"
    pq.write_table(pq.read_table(data).slice(0, 0), data)
    episodes = root / "meta" / "episodes.jsonl"
    rows = [json.loads(line) for line in episodes.read_text().splitlines()]
    rows[position]["length"] = 0
    episodes.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_an_empty_episode_is_skipped_with_a_warning_and_makes_the_run_incomplete(tmp_path, caplog, capsys):
    """The run said "complete" and exited 0 over the trajectories it found: a CI gate took a partial run for a whole."""
    root = make_dataset(tmp_path / "with_empty", lengths=LENGTHS)
    cut_to_empty(root, 1)
    with running_server(ReplayPolicy(root, execution_horizon=4)) as replay:
        code = open_loop(root, replay.port, tmp_path / "out", "--traj-ids", "0", "1", "2", "--allow-errors")
    assert code == 1
    data = results(tmp_path / "out")
    assert sorted(data["trajectories"]) == ["0", "2"] and data["aggregated"]["avg_mse"] == 0.0
    assert data["skipped_trajectories"] == [1] and "0 steps" in data["skip_reasons"]["1"]
    assert data["status"] == "incomplete" and "[1] skipped" in data["stop_reason"]
    assert "INCOMPLETE: 1 of 3 requested trajectories skipped (1: empty episodes" in capsys.readouterr().out
    assert any("trajectory 1 is empty" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_an_empty_episode_reads_as_zero_rows_of_each_group(tmp_path):
    from gr00t_eval.dataset import LeRobotDataset

    root = make_dataset(tmp_path / "with_empty", lengths=LENGTHS)
    cut_to_empty(root, 1)
    episode = LeRobotDataset(root).episode(1)
    assert episode.actions("arm").shape == (0, 3) and episode.states("gripper").shape == (0, 1)


def test_the_writer_refuses_an_episode_without_steps(tmp_path):
    with pytest.raises(ValueError, match="episode 0 has 0 steps; an episode needs at least one step"):
        with DatasetWriter(tmp_path / "ds", fps=10) as writer:
            writer.add_episode(frames={"image": np.zeros((0, 8, 8, 3), np.uint8)},
                               states={"arm": np.zeros((0, 3), np.float32)}, actions={"arm": np.zeros((0, 3), np.float32)},
                               task="nothing")


# --- --modality-keys ---------------------------------------------------------------------------------------


def test_a_repeated_modality_key_is_refused_up_front_naming_it(dataset, server, tmp_path, capsys):
    code = open_loop(dataset, server.port, tmp_path / "out", "--modality-keys", "arm", "gripper", "arm")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'arm' more than once" in err and "--modality-keys" in err
    assert not (tmp_path / "out").exists()


def test_distinct_modality_keys_still_select_the_compared_keys(dataset, server, tmp_path):
    assert open_loop(dataset, server.port, tmp_path / "out", "--traj-ids", "2", "--modality-keys", "gripper") == 0
    trajectory = results(tmp_path / "out")["trajectories"]["2"]
    assert list(trajectory["per_key"]) == ["gripper"] and trajectory["steps"] == len(expected_actions(2, LENGTHS[2])["gripper"])


def test_open_loop_and_the_rollout_read_a_reported_position_by_one_rule():
    from gr00t_eval import open_loop, reported_position
    from gr00t_eval.rollout import policy_io

    assert open_loop.is_position is reported_position.is_position and policy_io.is_position is reported_position.is_position
    is_position = reported_position.is_position
    assert is_position(0) and is_position(np.int64(7))
    assert not any(is_position(value) for value in (True, 2.0, None, "3", [1]))


# --- action steps other than 0..H-1 ----------------------------------------------------------------------------


@pytest.mark.parametrize("deltas", [[0, 2, 4, 6], [1, 2, 3, 4]], ids=["strided", "shifted"])
def test_action_delta_indices_other_than_each_next_step_are_refused_before_scoring(dataset, tmp_path, capsys, deltas):
    """Chunk element j was scored as step k+j whatever step it was for: a replay of the very same dataset reported
    MSE in the thousands instead of 0. The reference refuses such a policy; so does open-loop now."""
    from gr00t_client import ModalityConfig

    class StridedReplay(ReplayPolicy):  # a replay itself refuses such deltas: a policy that only reports them
        def get_modality_config(self):
            configs = dict(super().get_modality_config())
            configs["action"] = ModalityConfig(delta_indices=deltas, modality_keys=configs["action"].modality_keys)
            return configs

    with running_server(StridedReplay(dataset, execution_horizon=4)) as strided:
        code = open_loop(dataset, strided.port, tmp_path / "out", "--traj-ids", "0")
    err = capsys.readouterr().err
    assert code == 2, err
    assert (f"the policy's action delta_indices are {deltas}; this needs 0..3 (one action per step from the query "
            "on), or open-loop scores would compare each action with another step's ground truth") in err
    assert not (tmp_path / "out" / "results.json").exists()


# --- predictions that cannot be scored ------------------------------------------------------------------------


class ReshapedReplay(ReplayPolicy):
    """A replay whose chunks keep their total width but move a column from 'arm' to 'gripper' (3 + 1 -> 2 + 2)."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        arm, gripper = action["arm"], action["gripper"]
        return {"arm": arm[..., :2], "gripper": np.concatenate([arm[..., 2:], gripper], axis=-1)}, info


class NanReplay(ReplayPolicy):
    """A replay whose chunks for episode 1 hold a NaN (the server refuses to send them)."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        if info.get("episode_index") == 1:
            action = dict(action, gripper=np.full_like(action["gripper"], np.nan))
        return action, info


class HugeReplay(ReplayPolicy):
    """A replay whose 'arm' chunks are 1e200 in float64: finite, so no finite check refuses them."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        return dict(action, arm=np.full(np.shape(action["arm"]), 1e200)), info


def test_a_chunk_beyond_float32s_range_is_errored_naming_the_key_not_scored_as_an_mse_of_inf(dataset, tmp_path):
    """Its squared error overflowed: "Average MSE across all trajs: inf", null in results.json, status complete, exit 0."""
    with running_server(HugeReplay(dataset, execution_horizon=4, strict=False)) as huge:
        assert open_loop(dataset, huge.port, tmp_path / "out", "--traj-ids", "0") == 1
    data = results(tmp_path / "out")
    assert data["trajectories"] == {}
    [errored] = data["errored_trajectories"]
    assert ("the policy's action 'arm' at step 0 has values beyond float32's range (|value| <= 3.403e+38) in chunk "
            "rows [0, 1, 2, 3") in errored["error"]


def test_a_chunk_whose_keys_have_other_widths_than_the_datasets_is_errored_not_scored(dataset, tmp_path):
    """Only the widths' total was checked: a policy's arm of 2 and gripper of 2 against the dataset's 3 + 1 was scored
    column against the wrong column (arm MSE 15.9 instead of 7.3 in the audit's run), exit 0."""
    with running_server(ReshapedReplay(dataset, execution_horizon=4)) as reshaped:
        assert open_loop(dataset, reshaped.port, tmp_path / "out", "--traj-ids", "0") == 1
    data = results(tmp_path / "out")
    assert data["trajectories"] == {}
    [errored] = data["errored_trajectories"]
    assert "action 'arm' has shape (16, 2)" in errored["error"] and "'arm' has 3 values per step" in errored["error"]


def test_a_server_error_reply_errors_its_trajectory_and_the_others_are_kept(dataset, tmp_path):
    """A refused (non-finite) action ended the whole run without results.json, losing the trajectories scored."""
    with running_server(NanReplay(dataset, execution_horizon=4)) as nan_server:
        assert open_loop(dataset, nan_server.port, tmp_path / "out", "--traj-ids", "0", "1", "2") == 1
    data = results(tmp_path / "out")
    assert sorted(data["trajectories"]) == ["0", "2"] and data["aggregated"]["avg_mse"] == 0.0
    [errored] = data["errored_trajectories"]
    assert errored["traj_id"] == 1 and "the server answered with an error" in errored["error"]
    assert "non-finite" in errored["error"]


def test_non_finite_predictions_error_the_trajectory_instead_of_making_every_average_null(dataset):
    """A server without a NaN guard (the reference's): a NaN or inf made the whole average null, which also reads
    "no trajectories", with exit 0."""
    from gr00t_eval.dataset import LeRobotDataset
    from gr00t_eval.open_loop import OpenLoopConfig, TrajectoryError, evaluate_trajectory

    policy = NanReplay(dataset, execution_horizon=4, strict=False)  # as a server without a NaN guard answers
    config = OpenLoopConfig(str(dataset), traj_ids=[1], execution_horizon=4, plot=False)
    policy.reset({"episode_index": 1})
    with pytest.raises(TrajectoryError, match=r"action 'gripper' at step 0 has non-finite values \(NaN or inf\)"):
        evaluate_trajectory(policy, LeRobotDataset(dataset), 1, config, policy.get_modality_config(), report=lambda _: None)


class ShortReplay(ReplayPolicy):
    """A replay whose chunks hold 2 steps, whatever its modality config promises (a server without checks)."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        return {key: value[:, :2] for key, value in action.items()}, info


def test_a_chunk_shorter_than_the_execution_horizon_errors_its_trajectory_naming_both(dataset, tmp_path):
    """It ended the whole run with 'IndexError: index 2 is out of bounds for axis 0 with size 2'."""
    with running_server(ShortReplay(dataset, execution_horizon=3, strict=False)) as short:
        assert open_loop(dataset, short.port, tmp_path / "out", "--traj-ids", "0", "1", "--execution-horizon", "3") == 1
    data = results(tmp_path / "out")
    assert data["status"] == "complete" and data["trajectories"] == {}
    assert [e["traj_id"] for e in data["errored_trajectories"]] == [0, 1]
    assert ("the policy's action 'arm' at step 0 has 2 steps, and --execution-horizon 3 uses 3 of each chunk"
            in data["errored_trajectories"][0]["error"])


def test_a_trajectory_named_twice_is_refused():
    """Results are kept per id: a repeat was run again and only its last run kept and averaged."""
    from gr00t_eval.open_loop import OpenLoopConfig

    with pytest.raises(ValueError, match="traj_ids names 1 more than once"):
        OpenLoopConfig("ds", traj_ids=[1, 0, 1])


def test_each_action_panel_gets_its_own_keys_state_whatever_the_modality_keys_order(dataset, monkeypatch):
    """With --modality-keys gripper arm, the state (in the config's arm, gripper order) was drawn position by position:
    arm's state on the gripper panel."""
    from gr00t_eval import plots
    from gr00t_eval.dataset import LeRobotDataset
    from gr00t_eval.open_loop import OpenLoopConfig, evaluate_trajectory

    drawn = {}
    monkeypatch.setattr(plots, "plot_trajectory", lambda path, traj_id, gt, pred, steps, state, state_keys, action_keys, labels, **_:
                        drawn.update(state=state, state_keys=state_keys, labels=labels) or path)
    policy = ReplayPolicy(dataset, execution_horizon=4)
    policy.reset({"episode_index": 0})
    config = OpenLoopConfig(str(dataset), traj_ids=[0], execution_horizon=4, modality_keys=["gripper", "arm"], plot=True)
    episode = LeRobotDataset(dataset).episode(0)
    evaluate_trajectory(policy, LeRobotDataset(dataset), 0, config, policy.get_modality_config(), report=lambda _: None)
    assert drawn["labels"] == ["gripper[0]", "arm[0]", "arm[1]", "arm[2]"] and drawn["state_keys"] == ["gripper", "arm"]
    np.testing.assert_array_equal(drawn["state"], np.concatenate([episode.states("gripper"), episode.states("arm")], axis=1))


def _float64_copy(dataset, root):
    """A copy of `dataset` at `root` whose actions are float64 values near 1.5e5 that float32 cannot hold."""
    import shutil

    import pyarrow as pa

    shutil.copytree(dataset, root)
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        values = np.array(table.column("action").to_pylist(), np.float64) * 100 + 150000.0123456789
        table = table.set_column(table.schema.get_field_index("action"), "action", pa.array(list(values), pa.list_(pa.float64())))
        pq.write_table(table, path)
    return root


def test_a_float64_recording_is_scored_in_float64(dataset, tmp_path):
    """The recorded actions were cast to float32: values near 1.5e5 lost their last digits, scored as error (a policy
    predicting the recording exactly got MSE 1.6e-6), and a replay of the same float32 values hid it."""
    from gr00t_eval.dataset import LeRobotDataset
    from gr00t_eval.open_loop import OpenLoopConfig, evaluate_trajectory

    root = _float64_copy(dataset, tmp_path / "f64")
    episode = LeRobotDataset(root).episode(0)
    recorded = np.array(pq.read_table(sorted((root / "data").rglob("*.parquet"))[0]).column("action").to_pylist(), np.float64)
    assert episode.actions("arm").dtype == np.float32  # what policies and the wire take
    np.testing.assert_array_equal(episode.actions("arm", np.float64), recorded[:, :3])
    policy = ReplayPolicy(root, execution_horizon=4)
    policy.reset({"episode_index": 0})
    config = OpenLoopConfig(str(root), traj_ids=[0], execution_horizon=4, plot=False)
    result = evaluate_trajectory(policy, LeRobotDataset(root), 0, config, policy.get_modality_config(), report=lambda _: None)
    np.testing.assert_array_equal(result.ground_truth, recorded[: len(result.ground_truth)])


class ModelLikeReplay(ReplayPolicy):
    """A replay that reports a model's identity: the float32 values of the recording, as a model would predict them."""

    def identity(self):
        return {"kind": "gr00t", "weights_sha256": "0123456789abcdef"}


def test_a_replay_of_a_float64_recording_scores_0_and_a_model_is_still_scored_against_its_float64_values(
        dataset, tmp_path):
    """The replay serves the recording as float32 (as the wire carries actions): scored against the float64 values,
    its open-loop error was 5e-6 where the docs promise 0. A model predicting those float32 values is off the recording
    by their rounding, which stays its error."""
    root = _float64_copy(dataset, tmp_path / "f64")
    scores = {}
    for kind, policy in (("replay", ReplayPolicy(root, execution_horizon=4)), ("model", ModelLikeReplay(root, execution_horizon=4))):
        with running_server(policy) as served:
            assert open_loop(root, served.port, tmp_path / kind, "--traj-ids", "0", "1") == 0
        scores[kind] = results(tmp_path / kind)["aggregated"]
    assert scores["replay"]["avg_mse"] == 0.0 and scores["replay"]["avg_mae"] == 0.0
    assert 0.0 < scores["model"]["avg_mae"] < 0.01  # float32 rounding of values near 1.5e5: at most half of 1/64


# --- a run stopped part-way keeps what it scored ---------------------------------------------------------


class HangsOnEpisode(ReplayPolicy):
    """A replay that stops answering once asked for episode `hang_on` (a hung or vanished server)."""

    def __init__(self, *args, hang_on, **kwargs):
        super().__init__(*args, **kwargs)
        self.hang_on, self.release, self.hanging = hang_on, threading.Event(), threading.Event()

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        if info.get("episode_index") == self.hang_on:
            self.hanging.set()
            self.release.wait(30)
        return action, info


def test_a_server_that_stops_answering_mid_run_leaves_results_of_the_trajectories_scored(dataset, tmp_path, capsys):
    """The run ended with a timeout and no results.json: the trajectories already scored were lost."""
    policy = HangsOnEpisode(dataset, execution_horizon=4, hang_on=1)
    try:
        with running_server(policy) as hung:
            code = open_loop(dataset, hung.port, tmp_path / "out", "--traj-ids", "0", "1", "2", "--timeout-ms", "1500")
            policy.release.set()
    finally:
        policy.release.set()
    out = capsys.readouterr().out
    assert code == 1 and policy.hanging.is_set()  # as rollout's run aborted by a server gone: not 2, a refused command
    data = results(tmp_path / "out")
    assert data["status"] == "aborted" and list(data["trajectories"]) == ["0"] and data["not_run_trajectories"] == [1, 2]
    assert data["aggregated"]["n_trajectories"] == 1 and data["aggregated"]["avg_mse"] == 0.0
    assert "Timeout" in data["stop_reason"]
    lines = out.splitlines()
    assert lines[-2].startswith(f"ABORTED: {data['stop_reason']}; 2 trajectories did not run: [1, 2]; "
                                f"{tmp_path / 'out' / 'results.json'} holds the 1 trajectories scored before the stop")
    assert lines[-1] == f"Results: {tmp_path / 'out' / 'results.json'}"


@pytest.mark.parametrize("traj_ids", [["0", "1", "5"], ["5"]])
def test_ids_the_dataset_lacks_are_refused_before_connecting(dataset, tmp_path, capsys, traj_ids):
    """They were skipped with a warning on stderr, and the run exited 0 as "complete" over the others."""
    code = open_loop(dataset, free_port(), tmp_path / "out", "--traj-ids", *traj_ids)  # no server there
    err = capsys.readouterr().err
    assert code == 2
    assert (f"traj_ids (--traj-ids) [5] are not in the dataset {dataset}: it has 3 episodes (ids 0 to 2); expected "
            "ids the dataset has") in err
    assert not (tmp_path / "out").exists()


def test_ids_past_the_end_of_a_killed_recording_are_refused_saying_it_was_cut_short(tmp_path, capsys):
    """The refusal before connecting said only that the dataset has 2 episodes, not that it is 2 of a recording of 40
    killed part-way (R53: the warning that says so came only after this check)."""
    from eval.recording_claims import killed_recording

    short = make_dataset(tmp_path / "ds", lengths=LENGTHS[:2])
    killed_recording(short, 40)
    code = open_loop(short, free_port(), tmp_path / "out", "--traj-ids", "0", "2")
    err = capsys.readouterr().err
    assert code == 2
    assert (f"traj_ids (--traj-ids) [2] are not in the dataset {short}: it has 2 episodes (ids 0 to 1); expected ids "
            f"the dataset has (dataset {short} was recorded by a run that ended without finishing (2 of 40 episodes)"
            ) in err


def test_ctrl_c_mid_run_exits_130_with_the_trajectories_scored_in_results(dataset, tmp_path, capsys):
    policy = HangsOnEpisode(dataset, execution_horizon=4, hang_on=2)

    def press_ctrl_c_when_episode_2_is_asked_for():
        if policy.hanging.wait(30):
            os.kill(os.getpid(), signal.SIGINT)  # the request waits on the server; Ctrl-C arrives meanwhile
            time.sleep(0.5)
            policy.release.set()

    try:
        with running_server(policy) as hung:
            presser = threading.Thread(target=press_ctrl_c_when_episode_2_is_asked_for, daemon=True)
            presser.start()
            code = open_loop(dataset, hung.port, tmp_path / "out", "--traj-ids", "0", "1", "2")
            presser.join(30)
    finally:
        policy.release.set()
    assert code == 130
    data = results(tmp_path / "out")
    assert data["status"] == "interrupted" and sorted(data["trajectories"]) == ["0", "1"]
    assert data["not_run_trajectories"] == [2] and data["aggregated"]["n_trajectories"] == 2
    assert "INTERRUPTED" in capsys.readouterr().err


def test_a_complete_run_says_so_in_its_results(dataset, server, tmp_path):
    assert open_loop(dataset, server.port, tmp_path / "out", "--traj-ids", "0") == 0
    data = results(tmp_path / "out")
    assert data["status"] == "complete" and data["stop_reason"] is None and data["not_run_trajectories"] == []


@pytest.mark.parametrize("damaged", ["parquet", "mp4"])
def test_an_unreadable_episode_errors_that_trajectory_and_the_others_are_scored(tmp_path, capsys, damaged):
    """One damaged file stopped the run there (aborted, exit 2): every trajectory after it was not run."""
    own = make_dataset(tmp_path / "own", lengths=LENGTHS)
    with running_server(ReplayOfAnyCopy(own, execution_horizon=4)) as replay:  # its data hash: no longer the file's
        files = sorted((own / ("data" if damaged == "parquet" else "videos")).rglob(f"*episode_000001.{damaged}"))
        files[0].write_bytes(b"garbage")  # episode 1's file, after the server read its actions
        code = open_loop(own, replay.port, tmp_path / "out", "--traj-ids", "0", "1", "2")
    data = results(tmp_path / "out")
    assert code == 1 and data["status"] == "complete" and sorted(data["trajectories"]) == ["0", "2"]
    [errored] = data["errored_trajectories"]
    assert errored["traj_id"] == 1 and errored["error"].startswith("its recording cannot be read: ")
    assert f"episode_000001.{damaged}" in errored["error"]
    out = capsys.readouterr().out
    assert "trajectory 1 errored: its recording cannot be read" in out and "INCOMPLETE: 1 of 3" in out


def _as_text(table, column):
    """`table` with each value of `column` written as text that is no number ("v=1.5"), each row as wide as it was."""
    import pyarrow as pa

    def text(value):
        return [f"v={v}" for v in value] if isinstance(value, list) else f"v={value}"

    cells = pa.array([text(value) for value in table.column(column).to_pylist()])
    return table.set_column(table.schema.get_field_index(column), column, cells)


@pytest.mark.parametrize("damage,error", [
    (lambda table: table.drop(["observation.state"]), "no column 'observation.state'"),
    (lambda table: table.drop(["task_index"]), "no column 'task_index'"),
    (lambda table: _as_text(table, "observation.state"), "column 'observation.state' of episode 1 holds object values"),
    (lambda table: _as_text(table, "timestamp"), "column 'timestamp' of episode 1 holds object values"),
], ids=["state-column-missing", "language-column-missing", "state-as-text", "timestamp-as-text"])
def test_an_episode_with_a_missing_or_non_numeric_column_errors_that_trajectory_only(dataset, tmp_path, damage, error):
    """A KeyError (column missing) or numpy's ValueError (text cells) stopped the run there: aborted, exit 2, every
    trajectory after it not run."""
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    path = damaged / "data" / "chunk-000" / "episode_000001.parquet"
    pq.write_table(damage(pq.read_table(path)), path)
    with running_server(ReplayOfAnyCopy(dataset, execution_horizon=4)) as server:
        code = open_loop(damaged, server.port, tmp_path / "out", "--traj-ids", "0", "1", "2")
    data = results(tmp_path / "out")
    assert (code, data["status"], sorted(data["trajectories"])) == (1, "complete", ["0", "2"])
    [errored] = data["errored_trajectories"]
    assert errored["traj_id"] == 1 and errored["error"].startswith("its recording cannot be read: ")
    assert "episode_000001.parquet" in errored["error"] and error in errored["error"]


def test_a_missing_column_is_a_dataset_error_and_still_a_key_error(dataset, tmp_path):
    import shutil

    from gr00t_eval.dataset import DatasetColumnNotFoundError, DatasetError, LeRobotDataset

    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    path = damaged / "data" / "chunk-000" / "episode_000001.parquet"
    pq.write_table(pq.read_table(path).drop(["observation.state"]), path)
    with pytest.raises(DatasetColumnNotFoundError) as raised:
        LeRobotDataset(damaged).episode(1).column("observation.state")
    assert isinstance(raised.value, DatasetError) and isinstance(raised.value, KeyError)
    assert str(raised.value).startswith(f"{path}: no column 'observation.state'")  # not quoted as a KeyError's key


def test_a_server_shutting_down_mid_trajectory_stops_the_run_at_once_leaving_it_not_run(dataset, tmp_path, capsys):
    """A server stopped (Ctrl-C) while a trajectory's request ran answers 'server is shutting down'. That trajectory
    was scored errored, and the next request waited out the whole timeout of a server already gone."""
    policy = HangsOnEpisode(dataset, execution_horizon=4, hang_on=1)
    with stopped_while_it_hangs(policy) as stopping:
        started = time.monotonic()
        code = open_loop(dataset, stopping.port, tmp_path / "out", "--traj-ids", "0", "1", "2", "--timeout-ms", "20000")
        elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    data = results(tmp_path / "out")
    assert code == 1 and elapsed < 15
    assert data["status"] == "aborted" and list(data["trajectories"]) == ["0"] and data["not_run_trajectories"] == [1, 2]
    assert data.get("errored_trajectories", {}) in ({}, [])
    assert "server is shutting down" in data["stop_reason"]
    assert "ABORTED:" in out and "2 trajectories did not run: [1, 2]" in out


# --- the embodiment evaluated is the one served ---------------------------------------------------------------


@pytest.fixture(scope="module")
def libero_server(dataset):
    with running_server(ReplayPolicy(dataset, execution_horizon=4), embodiment_tag="libero_sim") as running:
        yield running


def test_an_embodiment_tag_the_server_does_not_serve_is_refused_not_recorded_as_the_runs(dataset, libero_server, tmp_path,
                                                                                          capsys):
    # results.json said simpler_env_google over scores computed with the widowx embodiment's statistics and projector
    assert open_loop(dataset, libero_server.port, tmp_path / "out", "--traj-ids", "0", "--embodiment-tag",
                     "simpler_env_google") == 2
    assert ("the server serves embodiment 'libero_sim' and this run asks for 'simpler_env_google' (--embodiment-tag)"
            in capsys.readouterr().err)
    assert not (tmp_path / "out" / "results.json").exists()


def test_without_a_tag_open_loop_records_the_served_embodiment_and_policy(dataset, libero_server, tmp_path):
    assert open_loop(dataset, libero_server.port, tmp_path / "out", "--traj-ids", "0") == 0
    data = results(tmp_path / "out")
    assert data["config"]["embodiment_tag"] == "libero_sim"  # it said new_embodiment, the flag's default
    assert data["policy"]["embodiment_tag"] == "libero_sim" and data["policy"]["identity"]["kind"] == "replay"
    assert open_loop(dataset, libero_server.port, tmp_path / "again", "--traj-ids", "0", "--embodiment-tag",
                     "LIBERO_SIM") == 0  # the same embodiment by name


@pytest.mark.parametrize("served, typed", [("my_robot", "my_robot"), ("my_robot", "MY_ROBOT"),
                                           ("libero_panda", "libero_panda")])
def test_a_checkpoints_own_tag_that_the_server_serves_is_evaluated(dataset, tmp_path, served, typed):
    """`--embodiment-tag my_robot` against `serve --embodiment-tag my_robot` exited 2 'Unknown embodiment tag'; an
    N1.6-era checkpoint's 'libero_panda' was read as libero_sim and refused as another embodiment."""
    with running_server(ReplayPolicy(dataset, execution_horizon=4), embodiment_tag=served) as server:
        assert open_loop(dataset, server.port, tmp_path / "out", "--traj-ids", "0", "--embodiment-tag", typed) == 0
    assert results(tmp_path / "out")["config"]["embodiment_tag"] == served


def test_a_server_that_names_no_embodiment_is_recorded_as_unknown_not_new_embodiment(dataset, tmp_path):
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        assert open_loop(dataset, server.port, tmp_path / "out", "--traj-ids", "0") == 0
    assert results(tmp_path / "out")["config"]["embodiment_tag"] is None


def test_a_mistyped_tag_for_a_server_that_names_no_embodiment_is_refused_in_one_line(dataset, tmp_path, capsys):
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        assert open_loop(dataset, server.port, tmp_path / "out", "--traj-ids", "0", "--embodiment-tag",
                         "new_embodimnt") == 2
    err = capsys.readouterr().err
    assert "Unknown embodiment tag: 'new_embodimnt' (--embodiment-tag)" in err and "known tags: " in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out" / "results.json").exists()


def test_a_stop_while_a_scored_trajectory_is_reported_keeps_it_scored_not_listed_as_not_run(dataset, tmp_path):
    """A Ctrl-C during the report of a trajectory just scored listed it as 'not run' too; after the last one the
    stop message itself failed with an IndexError."""
    from gr00t_eval.open_loop import OpenLoopConfig, evaluate_open_loop

    def report(line):
        if line.startswith("MSE for trajectory 1"):
            raise KeyboardInterrupt

    config = OpenLoopConfig(str(dataset), traj_ids=[0, 1], execution_horizon=4, plot=False,
                            output_dir=str(tmp_path / "out"))
    with pytest.raises(KeyboardInterrupt):
        evaluate_open_loop(ReplayPolicy(dataset, execution_horizon=4), config, report=report, progress=False)
    data = results(tmp_path / "out")
    assert sorted(data["trajectories"]) == ["0", "1"] and data["not_run_trajectories"] == []
    assert data["status"] == "interrupted"


class TwoRowReplay(ReplayPolicy):
    """A replay answering two chunk rows to the one observation row sent: row 0 the recording, row 1 the recording
    + 100 (a server that does not check its replies, such as upstream's)."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        return {key: np.concatenate([value, value + 100]) for key, value in action.items()}, info


def test_a_chunk_with_more_rows_than_the_observation_sent_errors_its_trajectory_instead_of_scoring_row_0(dataset, tmp_path):
    """Row 0 of a (2, H, D) reply was scored as the answer (MSE 0 here), status complete, exit 0; rollout refuses it."""
    with running_server(TwoRowReplay(dataset, execution_horizon=4, strict=False)) as two_rows:
        assert open_loop(dataset, two_rows.port, tmp_path / "out", "--traj-ids", "0") == 1
    data = results(tmp_path / "out")
    assert data["status"] == "complete" and data["trajectories"] == {}
    [errored] = data["errored_trajectories"]
    assert ("the policy's action 'arm' at step 0 has shape (2, 16, 3); expected (1, 16, 3), one row for the one "
            "observation row sent") in errored["error"]


class TextReplay(ReplayPolicy):
    """A replay whose 'gripper' chunk holds strings (a server that does not check its replies)."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        return dict(action, gripper=np.full(action["gripper"].shape, "a")), info


class GripperlessReplay(ReplayPolicy):
    """A replay whose chunks lack the 'gripper' key its modality config promises."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        return {"arm": action["arm"]}, info


@pytest.mark.parametrize("replay,error", [
    # it ended the whole run with a bare "ValueError: could not convert string to float", naming no key
    (TextReplay, "the policy's action 'gripper' at step 0 has dtype <U1; expected numbers (a float, int or bool array)"),
    # it ended the whole run with a KeyError (status aborted, the other trajectories not run)
    (GripperlessReplay, "the policy's action has no 'gripper' (nor 'action.gripper'); got keys ['arm']"),
], ids=["strings", "missing-key"])
def test_a_chunk_of_strings_or_missing_a_key_errors_its_trajectory_naming_the_key(replay, error, dataset, tmp_path):
    with running_server(replay(dataset, execution_horizon=4, strict=False)) as server:
        assert open_loop(dataset, server.port, tmp_path / "out", "--traj-ids", "0", "1") == 1
    data = results(tmp_path / "out")
    assert data["status"] == "complete" and data["trajectories"] == {}
    assert [e["traj_id"] for e in data["errored_trajectories"]] == [0, 1]
    assert error in data["errored_trajectories"][0]["error"]


@pytest.fixture(scope="module")
def eight_step_server(dataset):
    """A replay of 8-step chunks (as `serve --action-horizon 8`, or a simpler_env checkpoint, acts)."""
    from gr00t_eval.dataset import LeRobotDataset
    from gr00t_server.modality_configs import derive_from_dataset

    with running_server(ReplayPolicy(dataset, derive_from_dataset(LeRobotDataset(dataset), action_horizon=8))) as running:
        yield running


def test_without_an_execution_horizon_open_loop_uses_the_policys_shorter_chunk(dataset, eight_step_server, tmp_path):
    """The default 16 against an 8-step policy stopped every run with 'execution_horizon must be in [1, 8] ...'."""
    assert cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(eight_step_server.port), "--no-plots",
                     "--traj-ids", "1", "--output-dir", str(tmp_path / "out")]) == 0
    assert results(tmp_path / "out")["config"]["execution_horizon"] == 8


def test_an_execution_horizon_past_the_policys_chunk_is_refused_naming_the_flag(dataset, eight_step_server, tmp_path,
                                                                                  capsys):
    assert open_loop(dataset, eight_step_server.port, tmp_path / "out", "--execution-horizon", "16") != 0
    # a replay's own horizon (8 here) is checked first: the one flag value that can run
    assert "pass --execution-horizon 8 (or leave it out to use the server's)" in capsys.readouterr().err


def test_a_built_in_tags_value_is_evaluated_against_a_server_that_reports_its_name(tmp_path):
    """A Python PolicyServer given embodiment_tag="LIBERO_PANDA" for a policy without a tag reports it as given; the
    flag's `libero_sim` (the same built-in tag) was refused as another embodiment."""
    from gr00t_eval.open_loop_checks import evaluated_embodiment

    assert evaluated_embodiment("libero_sim", "LIBERO_PANDA") == "LIBERO_PANDA"
    assert evaluated_embodiment("LIBERO_PANDA", "libero_sim") == "libero_sim"
    with pytest.raises(ValueError, match="the server serves embodiment 'LIBERO_PANDA' and this run asks for 'unitree_g1'"):
        evaluated_embodiment("unitree_g1", "LIBERO_PANDA")


def test_a_task_holding_a_lone_surrogate_errors_only_its_trajectory_naming_it(tmp_path):
    """No wire carries a lone surrogate (a converter's JSON "\\udcff" for a non-UTF-8 byte): the client's refusal ended
    the run at that trajectory, and the trajectories after it were not run."""
    damaged = make_dataset(tmp_path / "ds", lengths=(6, 6))
    first_task = json.loads((damaged / "meta" / "tasks.jsonl").read_text().splitlines()[0])["task"]
    for name in ("tasks.jsonl", "episodes.jsonl"):  # episode 0's task gets the surrogate, episode 1's stays valid
        path = damaged / "meta" / name
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            if row.get("task") == first_task:
                row["task"] += " \udcff"
            if "tasks" in row:
                row["tasks"] = [t + " \udcff" if t == first_task else t for t in row["tasks"]]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with running_server(ReplayPolicy(damaged, execution_horizon=4)) as replay:
        assert open_loop(damaged, replay.port, tmp_path / "out", "--traj-ids", "0", "1") == 1
    data = results(tmp_path / "out")
    assert sorted(data["trajectories"]) == ["1"]
    [errored] = data["errored_trajectories"]
    assert errored["traj_id"] == 0 and "step 0" in errored["error"], errored
    assert "holds a lone surrogate at position" in errored["error"] and "no UTF-8 encoding" in errored["error"], errored
