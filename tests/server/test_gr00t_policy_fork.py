"""Gr00tPolicy used in a child made by os.fork (multiprocessing's default on Linux, a fork worker pool) after the
parent has run a call: the child computes the parent's action instead of hanging, and draws seedless noise of its
own."""

import logging
import os
import sys
import threading

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


def seedless_action(policy, observation):
    """The action of one seedless call (noise from torch's global RNG), as the text in_forked_child passes back."""
    action = policy.get_action(observation)[0]
    return str(np.concatenate([action[key].reshape(-1) for key in sorted(action)]).tolist())


def test_forked_children_draw_seedless_noise_of_their_own(tiny_checkpoint):
    """Each child inherited the parent's torch RNG state: every worker of a fork pool returned the bit-identical
    'random' action, N copies of one draw."""
    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(tiny_checkpoint, "new_embodiment", seed=1, image_size=(64, 64))
    children = [in_forked_child(lambda: seedless_action(policy, observation), timeout_s=30) for _ in range(2)]
    assert [code for code, _ in children] == [0, 0], children
    parents_next = seedless_action(policy, observation)  # what a child drew when it kept the parent's RNG state
    assert len({children[0][1], children[1][1], parents_next}) == 3


def test_children_forked_while_another_thread_draws_random_numbers_run_their_seedless_calls(tiny_checkpoint):
    """Reseeding torch's global RNG in the after-fork hook hung every child forked while a parent thread drew from it
    (its lock is held in the child for ever); the child's seedless noise comes from a generator of its own."""
    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(tiny_checkpoint, "new_embodiment", seed=1, image_size=(64, 64))
    stop = threading.Event()

    def draw():
        while not stop.is_set():
            torch.randn(256, 256)

    drawer = threading.Thread(target=draw, daemon=True)
    drawer.start()
    try:
        children = [in_forked_child(lambda: seedless_action(policy, observation), timeout_s=30) for _ in range(3)]
    finally:
        stop.set()
        drawer.join()
    assert [code for code, _ in children] == [0, 0, 0], children
    assert len({text for _, text in children}) == 3


def test_policies_made_in_forked_children_draw_seedless_noise_of_their_own(tiny_checkpoint):
    """As docs/serving.md advises, each worker makes its own policy: those used torch's global RNG, a copy of the
    parent's in every child, and returned the bit-identical 'random' action."""
    observation = example_observation(tiny_checkpoint, "new_embodiment", seed=1, image_size=(64, 64))
    torch.randn(3)  # the parent has used its RNG, as a parent that served or tested a policy has

    def made_here():
        return seedless_action(Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu"), observation)

    children = [in_forked_child(made_here, timeout_s=60) for _ in range(3)]
    assert [code for code, _ in children] == [0, 0, 0], children
    assert len({text for _, text in children}) == 3


def test_a_seeded_call_in_a_forked_child_equals_the_parents_after_its_seedless_one(tiny_checkpoint):
    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(tiny_checkpoint, "new_embodiment", seed=1, image_size=(64, 64))
    expected = policy.get_action(observation, {"seed": 2})[0]

    def seedless_then_seeded():
        seedless_action(policy, observation)
        return same_action(policy, observation, expected)

    assert in_forked_child(seedless_then_seeded, timeout_s=30) == (0, "True")


class TokenizerPausedInOneThread:
    """The processor's tokenizer, pausing in the thread named `paused` (with the policy's locks held) until released."""

    def __init__(self, tokenizer, paused):
        vars(self).update(tokenizer=tokenizer, paused=paused, inside=threading.Event(), release=threading.Event())

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __setattr__(self, name, value):  # padding_side, set under the processor's tokenizer lock
        setattr(self.tokenizer, name, value)

    def __call__(self, *args, **kwargs):
        if threading.current_thread().name == self.paused:
            self.inside.set()
            self.release.wait(60)
        return self.tokenizer(*args, **kwargs)


def test_a_forked_child_computes_while_another_parent_thread_was_inside_a_call_at_the_fork(tiny_checkpoint):
    """The parent's thread held the policy's and the tokenizer's locks at the fork: the child inherited them held,
    with no thread to release them, and its first call waited for ever."""
    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(tiny_checkpoint, "new_embodiment", seed=1, image_size=(64, 64))
    expected = policy.get_action(observation, {"seed": 2})[0]
    tokenizer = policy.processor.tokenizer = TokenizerPausedInOneThread(policy.processor.tokenizer, "parent's robot")
    robot = threading.Thread(target=policy.get_action, args=(observation, {"seed": 2}), name="parent's robot")
    robot.start()
    try:
        assert tokenizer.inside.wait(30)
        assert in_forked_child(lambda: same_action(policy, observation, expected), timeout_s=30) == (0, "True")
    finally:
        tokenizer.release.set()
        robot.join(30)


def test_a_forked_child_runs_torch_on_one_thread_set_once_however_many_policies(
        tiny_checkpoint, caplog, parent_on_two_torch_threads):
    caplog.set_level(logging.DEBUG, logger="gr00t_server.policies.gr00t_policy")
    for tag in ("new_embodiment", "libero_sim"):
        Gr00tPolicy(tiny_checkpoint, tag, device="cpu")

    def threads_and_notices():
        notices = sum("torch now runs on one CPU thread" in record.getMessage() for record in caplog.records)
        return torch.get_num_threads(), notices

    assert in_forked_child(threads_and_notices, timeout_s=15) == (0, "(1, 1)")


CHILD_MAKES_THE_POLICY = """
import os, sys
import numpy as np, torch
from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.test_checkpoint import example_observation
torch.set_num_threads(2)
torch.nn.functional.gelu(torch.ones(2_000_000))  # the parent's OpenMP team, and no policy made here
observation = example_observation(sys.argv[1], "new_embodiment", seed=1, image_size=(64, 64))
pid = os.fork()
if pid == 0:
    action = Gr00tPolicy(sys.argv[1], "new_embodiment", device="cpu").get_action(observation, {"seed": 2})[0]
    os._exit(0 if all(np.isfinite(value).all() for value in action.values()) else 3)
os._exit(os.waitpid(pid, 0)[1] >> 8)
"""


def test_a_policy_made_in_a_forked_child_answers_after_the_parent_ran_torch_without_a_policy(tiny_checkpoint):
    """The one-thread hook was registered by the first Gr00tPolicy made: a parent that only ran torch itself (and
    made no policy) forked children whose own policy hung, as the docs advise a policy per worker. A process of its
    own: this one has made policies already."""
    import signal
    import subprocess

    parent = subprocess.Popen([sys.executable, "-c", CHILD_MAKES_THE_POLICY, str(tiny_checkpoint)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = parent.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(parent.pid, signal.SIGKILL)  # the forked child too
        parent.communicate()
        pytest.fail("the forked child's policy did not answer in 90 s")
    assert parent.returncode == 0, err[-2000:]
