"""ReplayPolicy behaviour no test held, found by mutation testing (audit13b servecore): the row limit of a reset at
its exact value, and one step_index for several episodes."""

from __future__ import annotations

import numpy as np
import pytest

from eval.dataset_factory import expected_actions, make_dataset
from gr00t_eval.dataset import LeRobotDataset
from gr00t_server.modality_configs import derive_from_dataset
from gr00t_server.policies import ReplayPolicy

LENGTHS = (6, 9, 4)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("replay2") / "ds", lengths=LENGTHS, cameras=("image",))


def replay(dataset_root, **kwargs) -> ReplayPolicy:
    dataset = LeRobotDataset(dataset_root)
    return ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, **kwargs)


def test_a_reset_of_exactly_max_rows_episodes_is_taken_and_one_more_is_refused(dataset_root):
    """max_rows bounds the rows one session replays: a reset listing max_rows episodes replays them all, one more
    is refused naming the limit (and the session keeps its place)."""
    policy = replay(dataset_root, max_rows=2)
    info = policy.reset({"_session_id": "s", "episode_index": [1, 2]})
    assert info["episode_index"] == [1, 2]
    with pytest.raises(ValueError, match="episode_index lists 3 rows; this policy replays at most 2 rows per session"):
        policy.reset({"_session_id": "s", "episode_index": [0, 1, 2]})
    _, info = policy.get_action(None, {"_session_id": "s"})
    assert info["episode_index"] == [1, 2]


@pytest.mark.parametrize("name", ["episode_index", "step_index"])
def test_an_index_array_of_more_rows_than_max_rows_is_refused_before_it_is_listed(dataset_root, name):
    """A numpy array of indices became a Python list before its length was checked: a 256 MiB array of the wire's
    largest message made 32 million Python ints (and step_index was never held to max_rows at all)."""
    policy = replay(dataset_root, max_rows=2)
    options = {"_session_id": "s", "episode_index": [1, 2], name: np.zeros(10_000_000, np.int64)}
    with pytest.raises(ValueError, match=f"{name} lists 10000000 rows; this policy replays at most 2 rows per session"):
        policy.reset(options)


def test_one_step_index_for_several_episodes_starts_every_row_there(dataset_root):
    """reset(episode_index=[a, b], step_index=k) puts every row at step k (one value for all rows), and the rows'
    actions come from there."""
    policy = replay(dataset_root)
    info = policy.reset({"_session_id": "s", "episode_index": [0, 1], "step_index": 3})
    assert info["current_step"] == [3, 3]
    action, _ = policy.get_action(None, {"_session_id": "s", "batch_size": 2})
    np.testing.assert_array_equal(action["arm"][0], expected_actions(0, 6)["arm"][[3, 4, 5, 5]])
    np.testing.assert_array_equal(action["arm"][1], expected_actions(1, 9)["arm"][[3, 4, 5, 6]])
