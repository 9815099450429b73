"""ActionChunker checks and counters that no other test held (found by mutation testing): chunks whose rows or
horizons do not fit, settings out of range, and the counters and step alignment of prefetches. Real local policies."""

from __future__ import annotations

import numpy as np
import pytest
from test_chunking_edges import steps as edge_steps

from gr00t_client import ActionError, BasePolicy
from gr00t_client.chunking import ActionChunker


class ScriptedPolicy(BasePolicy):
    """Answers call k with the k-th action dict it was given (the last one again once they run out); lenient."""

    def __init__(self, *actions):
        super().__init__(strict=False)
        self.actions = list(actions)
        self.calls = 0
        self.observations = []

    def _get_action(self, observation, options=None):
        self.observations.append(observation)
        action = self.actions[min(self.calls, len(self.actions) - 1)]
        self.calls += 1
        return {key: value.copy() for key, value in action.items()}, {}

    def reset(self, options=None):
        return {}


def steps(base, n_envs=1, horizon=4):
    """test_chunking_edges' chunk (step j of env e holds base + 10 * e + j) with one value per step."""
    return edge_steps(base, n_envs, horizon, dim=1)


def obs(n_envs=1):
    return {"state": {"t": np.zeros((n_envs, 1), np.float32)}}


# --- chunks that do not fit -------------------------------------------------------------------------------------


def test_a_chunk_with_more_rows_than_envs_is_refused_not_cut_to_the_first_rows():
    """A policy that answers 2 rows for 1 env is refused: taking row 0 could hand the robot another env's action."""
    chunker = ActionChunker(ScriptedPolicy({"x": steps(0, n_envs=2)}))
    with pytest.raises(ActionError, match=r"action key 'x' has batch size 2; expected 1"):
        chunker.get_action(obs(1))


def test_a_chunk_whose_keys_have_different_horizons_is_refused_naming_both():
    """Keys of 4 and 2 steps in one chunk are refused before any step is handed out."""
    chunker = ActionChunker(ScriptedPolicy({"arm": steps(0, horizon=4), "gripper": steps(0, horizon=2)}))
    with pytest.raises(ActionError, match=r"action key 'gripper' has horizon 2; other keys have 4"):
        chunker.get_action(obs())


@pytest.mark.parametrize("new_weight", [-0.1, 1.5])
def test_a_new_weight_outside_zero_to_one_is_refused(new_weight):
    """A weighted merge outside [0, 1] extrapolates past both chunks: refused when the chunker is made."""
    with pytest.raises(ValueError, match=rf"new_weight must be in \[0, 1\], got {new_weight}"):
        ActionChunker(ScriptedPolicy({"x": steps(0)}), merge="weighted", new_weight=new_weight)


# --- merging a prefetched chunk ---------------------------------------------------------------------------------


def test_an_old_chunk_longer_than_the_prefetched_one_keeps_its_remaining_steps_after_the_overlap():
    """A shorter prefetched chunk is merged over the overlap and the old chunk's later steps follow unchanged."""
    policy = ScriptedPolicy({"x": steps(0, horizon=4)}, {"x": steps(100, horizon=2)})
    with ActionChunker(policy, asynchronous=True, prefetch_steps=3) as chunker:
        first, _ = chunker.get_action(obs())
        assert chunker.wait_for_prefetch(timeout=10)
        second, info = chunker.get_action(obs())
        assert (first["x"][0, 0], second["x"][0, 0]) == (0.0, 101.0)  # the new chunk's step 1 is this call's step
        assert info["merged_env_ids"] == [0]
        assert info["remaining"].tolist() == [2]  # the old chunk's steps 2 and 3 still follow


# --- counters -----------------------------------------------------------------------------------------------------


def test_a_full_reset_with_a_prefetch_in_flight_counts_its_envs_as_discarded():
    """stats.discarded_envs counts the rows of a prefetch that a full reset throws away (one per env)."""
    policy = ScriptedPolicy({"x": steps(0, n_envs=2)})
    with ActionChunker(policy, asynchronous=True, prefetch_steps=3) as chunker:
        chunker.get_action(obs(2))
        assert chunker.stats.prefetches == 1
        chunker.reset()
        assert chunker.stats.discarded_envs == 2
        assert chunker.stats.merged_envs == 0


def test_reset_of_an_env_id_equal_to_n_envs_is_refused_before_any_buffer_is_dropped():
    """env ids run from 0 to n_envs - 1: [0, n_envs] is an IndexError naming the id, and env 0 keeps its chunk."""
    chunker = ActionChunker(ScriptedPolicy({"x": steps(0, n_envs=2)}))
    chunker.get_action(obs(2))
    with pytest.raises(IndexError, match="env id 2 is out of range for 2 envs"):
        chunker.reset(env_ids=[0, 2])
    assert chunker.remaining().tolist() == [3, 3]


# --- what a background request reads ------------------------------------------------------------------------------


class GatedPolicy(ScriptedPolicy):
    """A ScriptedPolicy whose calls after the first wait for `gate` before reading the observation."""

    def __init__(self, *actions):
        super().__init__(*actions)
        import threading

        self.gate = threading.Event()
        self.states_read = []

    def _get_action(self, observation, options=None):
        if self.calls:
            assert self.gate.wait(10)
        self.states_read.append(float(observation["state"]["t"][0, 0]))
        return super()._get_action(observation, options)


def test_a_prefetch_reads_the_observation_as_it_was_when_the_robot_handed_it_over():
    """The robot may overwrite its state buffer in place after get_action returns; the prefetch still sees the old one."""
    policy = GatedPolicy({"x": steps(0)})
    observation = obs()
    with ActionChunker(policy, asynchronous=True, prefetch_steps=3) as chunker:
        observation["state"]["t"][0, 0] = 1.0
        chunker.get_action(observation)  # fetches, then prefetches from this observation
        observation["state"]["t"][0, 0] = 2.0  # the robot's next reading, written into the same buffer
        policy.gate.set()
        assert chunker.wait_for_prefetch(timeout=10)
    assert policy.states_read == [1.0, 1.0]


def test_a_per_env_fetch_sends_only_the_asking_envs_language_rows():
    """Lists of one item per env (the language) are cut to the envs fetched, as arrays are."""
    policy = ScriptedPolicy({"x": steps(0, n_envs=2)}, {"x": steps(0, n_envs=1)})
    observation = {"state": {"t": np.zeros((2, 1), np.float32)}, "language": {"task": [["open the drawer"], ["close it"]]}}
    chunker = ActionChunker(policy, per_env=True)
    chunker.get_action(observation)
    chunker.reset(env_ids=[1])
    chunker.get_action(observation)
    assert policy.observations[1]["language"]["task"] == [["close it"]]
    assert policy.observations[1]["state"]["t"].shape == (1, 1)


class AdvancingPolicy(ScriptedPolicy):
    """A ScriptedPolicy whose info says it advances 8 steps per call, as a replay server's does."""

    def _get_action(self, observation, options=None):
        action, _info = super()._get_action(observation, options)
        return action, {"execution_horizon": 8}


def test_a_chunker_executing_fewer_steps_than_the_policy_advances_warns_that_steps_will_be_skipped(caplog):
    """n_action_steps=4 against a policy advancing 8 per call skips 4 recorded steps a chunk: warned once, naming 8."""
    import logging

    with caplog.at_level(logging.WARNING, logger="gr00t_client.chunking"):
        chunker = ActionChunker(AdvancingPolicy({"x": steps(0, horizon=16)}), n_action_steps=4)
        for _ in range(8):
            chunker.get_action(obs())
    warnings = [record.getMessage() for record in caplog.records if record.name == "gr00t_client.chunking"]
    assert len(warnings) == 1
    assert "this ActionChunker executes 4 steps of each chunk: steps will be skipped; pass n_action_steps=8" in warnings[0]
