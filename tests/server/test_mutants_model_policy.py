"""Gr00tPolicy load-time refusals of a processor that disagrees with its model, and request options, that no other test
pinned (audit 13, mutation testing): each test here failed on a hand-made mutant of policies/gr00t_policy.py. Real tiny
checkpoints with one processor file edited, loaded as a user's would be."""

import json

import pytest
from test_checkpoint_config_values import _edit_processor_kwargs, _load_error

from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.test_checkpoint import example_observation

TAG = "new_embodiment"


def test_a_processor_state_width_other_than_the_models_is_refused_at_load(copy_of):
    """processor_config max_state_dim 133 against config.json's 132: every state would be padded to 133 columns."""
    checkpoint = copy_of()
    _edit_processor_kwargs(checkpoint, lambda kwargs: kwargs.__setitem__("max_state_dim", 133))
    assert "processor max_state_dim 133 != model max_state_dim 132" in _load_error(checkpoint)


def test_a_processor_action_width_other_than_the_models_is_refused_at_load(copy_of):
    """processor_config max_action_dim 131 against config.json's 132."""
    checkpoint = copy_of()
    _edit_processor_kwargs(checkpoint, lambda kwargs: kwargs.__setitem__("max_action_dim", 131))
    assert "processor max_action_dim 131 != model max_action_dim 132" in _load_error(checkpoint)


def test_a_projector_index_equal_to_max_num_embodiments_is_refused_at_load(copy_of):
    """Index 32 of a model with 32 projectors (0..31) is outside the category-specific weights."""
    checkpoint = copy_of()
    (checkpoint / "embodiment_id.json").write_text(json.dumps({TAG: 32, "libero_sim": 2}))
    assert f"embodiment '{TAG}' has projector index 32, outside [0, 32) of the model's max_num_embodiments" in _load_error(checkpoint)


def test_an_action_horizon_longer_than_the_models_is_refused_at_load(copy_of):
    """41 action steps of a model that makes 40 would cut every chunk short (libero_sim: absolute keys only)."""
    checkpoint = copy_of()

    def longer(kwargs):
        kwargs["max_action_horizon"] = 41
        kwargs["modality_configs"]["libero_sim"]["action"]["delta_indices"] = list(range(41))
    _edit_processor_kwargs(checkpoint, longer)
    message = _load_error(checkpoint, "libero_sim")
    assert "embodiment 'libero_sim' has action horizon 41, more than the model's action_horizon 40" in message


def test_two_language_frames_are_refused_at_load(copy_of):
    """The policy reads one instruction per row; a language config of two frames is refused, not half-read."""
    checkpoint = copy_of()
    _edit_processor_kwargs(checkpoint, lambda kwargs: kwargs["modality_configs"][TAG]["language"].__setitem__(
        "delta_indices", [-1, 0]))
    assert f"Only one language delta index is supported; '{TAG}' has [-1, 0]" in _load_error(checkpoint)


def test_seed_and_noise_together_are_refused(tiny_checkpoint):
    """options with both 'seed' and 'noise' are refused rather than one silently winning."""
    import numpy as np

    policy = Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu")
    observation = example_observation(tiny_checkpoint, "libero_sim")
    noise = np.zeros((policy.model_config.action_horizon, policy.model_config.max_action_dim), np.float32)
    with pytest.raises(ValueError, match="options may contain 'seed' or 'noise', not both"):
        policy.get_action(observation, {"seed": 0, "noise": noise})
