"""Gr00tPolicy used in a child made by os.fork (multiprocessing's default on Linux, a fork worker pool) after the
parent has run a call: the child computes the parent's action instead of hanging."""

import logging
import os
import sys

import numpy as np
import pytest
import torch
from forked_child import in_forked_child

from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.test_checkpoint import example_observation

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork (Linux)")


@pytest.fixture
def parent_on_two_torch_threads():
    """The parent runs torch on an OpenMP team of at least two threads (one core's machine included)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield
    torch.set_num_threads(threads)


def same_action(policy, observation, expected):
    action = policy.get_action(observation, {"seed": 2})[0]
    return all(np.array_equal(action[key], expected[key]) for key in expected)


def test_a_forked_child_computes_the_parents_action_after_the_parent_ran_a_call(
        tiny_checkpoint, parent_on_two_torch_threads):
    """GNU OpenMP's threads do not survive fork: the child's first parallel torch op waited for them for ever."""
    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(tiny_checkpoint, "new_embodiment", seed=1, image_size=(64, 64))
    expected = policy.get_action(observation, {"seed": 2})[0]  # starts the parent's OpenMP team

    assert in_forked_child(lambda: same_action(policy, observation, expected), timeout_s=30) == (0, "True")


def test_a_forked_child_runs_torch_on_one_thread_set_once_however_many_policies(
        tiny_checkpoint, caplog, parent_on_two_torch_threads):
    caplog.set_level(logging.DEBUG, logger="gr00t_server.policies.gr00t_policy")
    for tag in ("new_embodiment", "libero_sim"):
        Gr00tPolicy(tiny_checkpoint, tag, device="cpu")

    def threads_and_notices():
        notices = sum("torch now runs on one CPU thread" in record.getMessage() for record in caplog.records)
        return torch.get_num_threads(), notices

    assert in_forked_child(threads_and_notices, timeout_s=15) == (0, "(1, 1)")
