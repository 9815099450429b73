"""An env's info["success"] must be one boolean, integer or finite float: a NaN, a string or several values error the
episode naming the value. bool() read NaN and "False" as a success (success_rate 1.0, no error), and np.any took
[True, False] as one."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("gymnasium")

from eval.scale_fixtures import ConstantPolicy, WalkToEnv  # noqa: E402
from gr00t_eval.rollout import RolloutConfig, register_env_prefix, run_rollout  # noqa: E402
from gr00t_eval.rollout.multistep import success_from_info  # noqa: E402


class FlaggedWalk(WalkToEnv):
    """walkto whose every step reports info["success"] = `flag`."""

    def __init__(self, flag):
        super().__init__(1.0)
        self.flag = flag

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "success": self.flag}


def rollout_with_flag(flag):
    register_env_prefix("flagged", "new_embodiment", lambda task, **kwargs: FlaggedWalk(flag))
    config = RolloutConfig("flagged/walk", n_episodes=2, n_envs=1, seed=0, max_episode_steps=4, n_action_steps=2)
    return run_rollout(ConstantPolicy(), config, progress=False)


@pytest.mark.parametrize("flag, shown", [(math.nan, "success=nan"), ("False", "success='False'"),
                                         ([True, False], "success=[True, False]")])
def test_a_success_flag_that_is_not_one_boolean_errors_the_episode_naming_it(flag, shown):
    result = rollout_with_flag(flag)
    assert result.success_rate != 1.0 and result.n_errors == 2
    error = result.outcomes[0].error
    assert error.startswith(f"step 0: the env reported {shown}"), error
    assert "which is not a boolean" in error and "the episode cannot be scored" in error


@pytest.mark.parametrize("flag", [True, np.bool_(True), 1, np.int64(1), 1.0, np.float32(1.0), np.array([True]), [1]])
def test_booleans_integers_finite_floats_and_one_value_arrays_are_success_flags(flag):
    assert success_from_info({"success": flag}) is True
    assert rollout_with_flag(flag).success_rate == 1.0


def test_a_false_flag_of_any_accepted_kind_is_no_success():
    for flag in (False, np.bool_(False), 0, 0.0, np.array([False])):
        assert success_from_info({"is_success": flag}) is False


def test_a_success_flag_of_none_is_no_report_not_a_success():
    assert success_from_info({"success": None, "is_success": True}) is True
    assert success_from_info({"success": None}) is False
    result = rollout_with_flag(None)
    assert result.n_errors == 0 and result.success_rate == 0.0


class OneValueArrayLike:
    """An array-like of one value that numpy knows only through `__array__` (as a jax array is)."""

    def __init__(self, value):
        self.value = value

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value, dtype=dtype)


def test_a_one_value_torch_tensor_or_array_like_is_a_success_flag():
    """IsaacLab and ManiSkill style envs report info["success"] = torch.tensor(True): every episode errored ("not a
    boolean"), though the flag may be an array of one value and states may be CPU torch tensors."""
    torch = pytest.importorskip("torch")
    for flag, expected in [(torch.tensor(True), True), (torch.tensor(False), False), (torch.tensor([1.0]), True),
                           (torch.tensor([[0]]), False), (torch.tensor(1.0, requires_grad=True), True),
                           (OneValueArrayLike([True]), True), (OneValueArrayLike(0), False)]:
        assert success_from_info({"success": flag}) is expected, flag
    result = rollout_with_flag(torch.tensor(True))
    assert result.n_errors == 0 and result.success_rate == 1.0


def test_a_several_value_or_non_boolean_torch_tensor_errors_naming_its_type_and_shape():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"success=Tensor of shape \(2,\) \(torch.bool\), which is not a boolean"):
        success_from_info({"success": torch.tensor([True, False])})
    with pytest.raises(ValueError, match=r"success=Tensor of shape \(\) \(torch.float32\) holding nan, which is not"):
        success_from_info({"success": torch.tensor(float("nan"))})
    result = rollout_with_flag(torch.tensor([True, False]))
    assert result.n_errors == 2
    assert result.outcomes[0].error.startswith("step 0: the env reported success=Tensor of shape (2,)")
