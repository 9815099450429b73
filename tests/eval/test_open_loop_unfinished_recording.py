"""Open-loop over a dataset whose recording was killed or stopped part-way warns once, before scoring, as the replay
server and make-test-checkpoint do: it was scored as the whole set without a word."""

from __future__ import annotations

import logging

import pytest

from eval.dataset_factory import make_dataset
from eval.recording_claims import killed_recording, stopped_recording
from gr00t_eval.dataset.overwrite import RECORD_CLAIM
from gr00t_eval.open_loop import OpenLoopConfig, evaluate_open_loop
from gr00t_eval.run_claim import finish_claim, take_claim

pytest.importorskip("gr00t_server")

from gr00t_server.policies import ReplayPolicy  # noqa: E402

LENGTHS = (5, 5)
UNFINISHED = ("was recorded by a run that ended without finishing", "was recorded by a run that stopped before finishing")


def finished_recording(dataset, n_episodes):
    """Give `dataset` the claim of a recording of `n_episodes` that ran to its end."""
    finish_claim(take_claim(dataset, RECORD_CLAIM, {"n_episodes": n_episodes}, flag="--output"), "complete")


class ReplayNotingWarnings(ReplayPolicy):
    """An in-process replay that notes open-loop's warnings logged before its first query (`caplog`'s, once set)."""

    caplog = None
    before_first_query = None

    def _get_action(self, observation, options=None):
        if self.before_first_query is None:
            self.before_first_query = own_warnings(self.caplog)
        return super()._get_action(observation, options)


def own_warnings(caplog):
    """The warnings of open-loop's own loggers (gr00t_eval), not those of the replay (gr00t_server)."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("gr00t_eval") and r.levelno >= logging.WARNING]


def open_loop_warnings(dataset, tmp_path, caplog):
    """Run open-loop over `dataset` with an in-process replay of it: open-loop's warnings, and those of them logged
    before the first query."""
    replay = ReplayNotingWarnings(dataset, execution_horizon=5)  # its own warning at start is the server's
    replay.caplog = caplog
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        config = OpenLoopConfig(str(dataset), traj_ids=[0, 1], execution_horizon=5, plot=False,
                                output_dir=str(tmp_path / "out"))
        evaluate_open_loop(replay, config, report=lambda line: None, progress=False)
    return own_warnings(caplog), replay.before_first_query


@pytest.mark.parametrize("unfinished, said", [
    (killed_recording, "ended without finishing (2 of 40 episodes)"),
    (stopped_recording, "stopped before finishing (2 of 40 episodes"),
], ids=["killed", "stopped"])
def test_open_loop_warns_once_before_scoring_of_a_recording_that_did_not_finish(tmp_path, caplog, unfinished, said):
    dataset = make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=())
    unfinished(dataset, 40)
    warnings, before_first_query = open_loop_warnings(dataset, tmp_path, caplog)
    warned = [w for w in warnings if "was recorded by a run that" in w]
    assert len(warned) == 1, warnings
    assert warned[0].startswith(f"dataset {dataset} was recorded by a run that {said}"), warned[0]
    assert warned == [w for w in before_first_query if "was recorded by a run that" in w]


@pytest.mark.parametrize("recorded", [
    lambda dataset: finished_recording(dataset, 2),
    lambda dataset: killed_recording(dataset, 2),  # killed after its last episode: all there
    lambda dataset: None,  # stock LeRobot, or an older gr00t-eval: no record claim
], ids=["finished", "killed-after-the-last", "no-claim"])
def test_open_loop_says_nothing_of_a_whole_recording(tmp_path, caplog, recorded):
    dataset = make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=())
    recorded(dataset)
    warnings, _ = open_loop_warnings(dataset, tmp_path, caplog)
    assert not [w for w in warnings if any(words in w for words in UNFINISHED)], warnings
