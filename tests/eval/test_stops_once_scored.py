"""A Ctrl-C once a command has scored its work: while open-loop reports its averages and saves results.json, while a
rollout writes the videos of episodes that just ended, and after a rollout, open-loop or batch has saved (and
printed) its results. Each test sends a real SIGINT to this process at that exact point, so the window is hit every
time. Real servers on loopback, real files, the real CLI (main, which takes the stop signals as the program does)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from eval.scale_fixtures import CameraWalkEnv, ConstantPolicy, policy_server
from gr00t_client import EmbodimentTag
from gr00t_eval import batch_cli, cli, scale_cli
from gr00t_eval.rollout.envs import register_env_prefix
from gr00t_eval.rollout.runner import RolloutRunner
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def outcome(claim: Path) -> str:
    return json.loads(claim.read_text())["claim"]["outcome"]


# --- open-loop ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("stops") / "ds", lengths=(6, 9))


@pytest.fixture(scope="module")
def replay_server(dataset):
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as running:
        yield running


def open_loop_with_ctrl_c_at(line_start, dataset, port, out, monkeypatch, *extra):
    """open-loop of both trajectories, with a Ctrl-C as the console line starting with `line_start` is printed."""
    from tqdm.auto import tqdm

    write = tqdm.write

    def write_then_ctrl_c(text, *args, **kwargs):
        write(text, *args, **kwargs)
        if text.startswith(line_start):
            ctrl_c()

    monkeypatch.setattr(tqdm, "write", write_then_ctrl_c)
    return cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(port), "--execution-horizon", "4",
                     "--traj-ids", "0", "1", "--output-dir", str(out), *extra])


def test_a_ctrl_c_as_open_loop_prints_its_averages_keeps_every_score(dataset, replay_server, tmp_path, monkeypatch,
                                                                       capfd):
    """It lost them all: no results.json, exit 130, and the output folder emptied (its claim deleted) while the plots
    elsewhere stayed."""
    out, plots = tmp_path / "out", tmp_path / "plots"
    code = open_loop_with_ctrl_c_at("Average MSE", dataset, replay_server.port, out, monkeypatch,
                                    "--save-plot-path", f"{plots}/")
    captured = capfd.readouterr()  # the note is written to file descriptor 2 (from a signal handler)
    results = json.loads((out / "results.json").read_text())
    assert code == 0, captured.err
    assert results["status"] == "complete" and results["aggregated"]["n_trajectories"] == 2
    assert "saving the results of the trajectories scored" in captured.err
    assert outcome(out / "open_loop_run.json") == "complete"


@pytest.mark.parametrize("stop", [ctrl_c, lambda: (os.kill(os.getpid(), signal.SIGHUP),
                                                    os.kill(os.getpid(), signal.SIGHUP))],
                         ids=["ctrl_c", "two_sighups"])
def test_a_ctrl_c_as_open_loop_prints_done_leaves_exit_status_and_claim_complete(dataset, replay_server, tmp_path,
                                                                                   monkeypatch, capsys, stop):
    """results.json said complete, while the command exited 130 and its claim said 'interrupted'. SIGHUP (a closed
    terminal) was left out of the signals ignored once the results were saved."""
    out = tmp_path / "out"
    monkeypatch.setattr(sys.modules[__name__], "ctrl_c", stop)
    code = open_loop_with_ctrl_c_at("Done", dataset, replay_server.port, out, monkeypatch, "--no-plots")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
    assert outcome(out / "open_loop_run.json") == "complete"
    assert "interrupted" not in captured.err


# --- rollout --------------------------------------------------------------------------------------------------------


def rollout(port, out, *extra, env_name="walkto/fast"):
    return cli.main(["rollout", "--env-name", env_name, "--n-episodes", "2", "--n-envs", "1", "--n-action-steps",
                     "4", "--max-episode-steps", "6", "--policy-client-port", str(port), "--vectorization", "sync",
                     "--seed", "0", "--output-dir", str(out), *extra])


def test_a_ctrl_c_while_ended_episodes_videos_are_written_keeps_those_episodes(tmp_path, monkeypatch, capsys):
    """Their videos were in place, but episodes.jsonl and results.json did not list them (a --resume ran them
    again), and the console said no episode video was written."""
    write_videos = RolloutRunner._write_videos

    def write_videos_then_ctrl_c(self, errored_rows):
        videos = write_videos(self, errored_rows)
        if any(videos):
            ctrl_c()
        return videos

    monkeypatch.setattr(RolloutRunner, "_write_videos", write_videos_then_ctrl_c)
    register_env_prefix("stopcam", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: CameraWalkEnv(2.0))
    out = tmp_path / "out"
    with policy_server(ConstantPolicy()) as server:
        code = rollout(server.port, out, env_name="stopcam/fast")
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    videos = sorted(path.name for path in (out / "videos").glob("episode_*.mp4"))
    assert code == 130
    assert results["status"] == "interrupted"
    assert [episode["episode_index"] for episode in results["per_episode"]] == [0]
    assert [Path(path).name for path in results["video_paths"]] == videos and len(videos) == 1
    assert "Video saved to" in printed and "No episode video" not in printed


def test_a_ctrl_c_once_a_rollout_printed_its_results_leaves_exit_status_and_claim_complete(tmp_path, monkeypatch,
                                                                                          capsys):
    """It exited 130 with its run.json claim 'interrupted', while results.json said complete."""
    report_rollout = scale_cli._report_rollout

    def report_then_ctrl_c(*args):
        code = report_rollout(*args)
        ctrl_c()
        return code

    monkeypatch.setattr(scale_cli, "_report_rollout", report_then_ctrl_c)
    out = tmp_path / "out"
    with policy_server(ConstantPolicy()) as server:
        code = rollout(server.port, out, "--no-video")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
    assert outcome(out / "run.json") == "complete"
    assert "interrupted" not in captured.err


# --- batch ----------------------------------------------------------------------------------------------------------


def test_a_ctrl_c_as_a_finished_batch_prints_its_table_leaves_exit_status_and_claim_its(tmp_path, monkeypatch, capsys):
    """Every job was done and batch_results.json said so, but the batch exited 130 ('interrupted')."""
    format_table = batch_cli.format_table

    def format_table_then_ctrl_c(batch):
        ctrl_c()
        return format_table(batch)

    monkeypatch.setattr(batch_cli, "format_table", format_table_then_ctrl_c)
    out = tmp_path / "out"
    with policy_server(ConstantPolicy()) as server:
        jobs = tmp_path / "jobs.json"
        jobs.write_text(json.dumps({
            "defaults": {"n_episodes": 1, "n_envs": 1, "seed": 0, "max_episode_steps": 6,
                         "overrides": {"n_action_steps": 2, "vectorization": "sync", "video_dir": None}},
            "jobs": [{"name": "a", "env_name": "walkto/fast", "policy_server": {"port": server.port}}]}))
        code = cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [job["status"] for job in json.loads((out / "batch_results.json").read_text())["jobs"]] == ["done"]
    assert outcome(out / "batch.json") == "complete"
    assert "interrupted" not in captured.err and f"Results: {out / 'batch_results.json'}" in captured.out


def test_main_puts_back_the_handlers_of_stop_signals_it_came_to_ignore(tmp_path):
    """A caller of main(argv) (these tests) keeps its own Ctrl-C once a command has ignored it after its results."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with policy_server(ConstantPolicy()) as server:
        assert rollout(server.port, tmp_path / "out", "--no-video") == 0
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_stops_held_with_a_waiting_note_act_after_the_block_and_a_second_one_stops_waiting(capfd):
    """The rollout holds a stop while the ended episodes' videos are written and scored; that write is untimed, so a
    second Ctrl-C must still stop it (a hung write could not be stopped otherwise)."""
    from gr00t_client.cli_signals import stop_signals_held

    reached_end = False
    with pytest.raises(KeyboardInterrupt):  # the first one, acted on once the block ended
        with stop_signals_held("saving the ended episodes"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached_end = True
    assert reached_end
    assert capfd.readouterr().err.count("saving the ended episodes") == 1

    reached_end = False
    with pytest.raises(KeyboardInterrupt):  # the second one, at once
        with stop_signals_held("saving the ended episodes"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached_end = True
    assert not reached_end



def test_a_deferred_stops_note_on_a_stderr_gone_does_not_break_the_block():
    """With `2>&1 | tee log`, the Ctrl-C killed tee too: writing the note raised BrokenPipeError in the middle of
    the block that saves the results (no results.json, an ended episode dropped)."""
    from gr00t_client.cli_signals import stop_signals_held
    from gr00t_eval.run_stop import interrupts_deferred

    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader gone: a write raises BrokenPipeError (EPIPE; Python ignores SIGPIPE)
    saved = os.dup(2)
    os.dup2(write_end, 2)
    try:
        with interrupts_deferred("saving"):
            ctrl_c()
            time.sleep(0.05)
            finished_deferred = True
        with pytest.raises(KeyboardInterrupt):  # held, acted on after the block
            with stop_signals_held("saving"):
                ctrl_c()
                time.sleep(0.05)
                finished_held = True
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write_end)
    assert finished_deferred and finished_held


def test_a_stop_signal_this_process_ignores_stays_ignored_in_held_and_deferred_blocks():
    """A command started with `&` by a script (SIGINT ignored) was interrupted by Ctrl-C while its ended episodes'
    videos were written: the block put its own handler in place of SIG_IGN."""
    from gr00t_client.cli_signals import stop_signals_held
    from gr00t_eval.run_stop import interrupts_deferred

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_signals_held("saving"):
            ctrl_c()
            ctrl_c()
            time.sleep(0.05)
        with interrupts_deferred("saving"):
            ctrl_c()
            ctrl_c()
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_command_run_on_another_thread_leaves_the_programs_stop_signals_alone():
    """A program running gr00t-server's main() on a thread and an evaluation on its main thread came to ignore
    Ctrl-C for good, and the thread's main() then failed in finish ("signal only works in main thread")."""
    import threading

    from gr00t_client import cli_signals

    outcome_of_thread = []

    def run():
        stops = cli_signals.ProgramStopSignals()
        try:
            stops.finish(ignore_from_now_on=False)
            outcome_of_thread.append("finished")
        except Exception as exc:  # noqa: BLE001 - the failure this test looks for
            outcome_of_thread.append(repr(exc))

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    cli_signals.stop_signals_ignored_until_exit()  # no command line's main() runs on this thread
    assert outcome_of_thread == ["finished"]
    assert signal.getsignal(signal.SIGINT) is before and not cli_signals._ignored_until_exit


def test_a_signal_this_process_ignores_stays_ignored_by_the_command_lines_and_the_server():
    """`gr00t-server serve ... &` in a script starts with SIGINT ignored; the server took it back, and the Ctrl-C
    meant for the command in the foreground stopped it. `trap '' TERM; exec gr00t-eval ...` likewise."""
    from gr00t_client.cli_signals import ProgramStopSignals
    from gr00t_server.threads import handled_stop_signals

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert signal.SIGINT not in handled_stop_signals() and signal.SIGTERM not in handled_stop_signals()
        stops = ProgramStopSignals()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        stops.finish(ignore_from_now_on=False)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
