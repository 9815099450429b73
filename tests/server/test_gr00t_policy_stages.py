"""Gr00tPolicy's batched preprocessing, its stage timings and clip_outliers, on the tiny random-weight checkpoint."""

import dataclasses
import threading

import numpy as np
import pytest
import torch

from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.processing.processor import Gr00tN1d7Processor
from gr00t_server.test_checkpoint import example_observation

STAGES = {"preprocess_ms", "model_ms", "postprocess_ms"}


@pytest.fixture(scope="module")
def libero(tiny_checkpoint):
    return Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu")


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return Gr00tN1d7Processor.from_pretrained(tiny_checkpoint)


def rows_of(observation, row):
    """One row of a batched observation, as a process_step call takes it."""
    video = {k: v[row] for k, v in observation["video"].items()}
    state = {k: v[row] for k, v in observation["state"].items()}
    return video, state


@pytest.mark.parametrize("tag,image_size", [("libero_sim", (256, 256)), ("new_embodiment", (120, 160))])
def test_process_batch_equals_collating_single_steps(processor, tiny_checkpoint, tag, image_size):
    observation = example_observation(tiny_checkpoint, tag, batch_size=3, seed=4, image_size=image_size)
    languages = ["pick up the bowl", "stop", "open the drawer and put the cup inside"]
    batch = processor.process_batch(tag, observation["video"], observation["state"], languages)
    steps = [processor.process_step(tag, *rows_of(observation, row), languages[row]) for row in range(3)]
    expected = processor.collate(steps)
    assert sorted(batch) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(batch[key], value), key


def test_process_batch_names_a_language_count_that_disagrees_with_the_batch(processor, tiny_checkpoint):
    observation = example_observation(tiny_checkpoint, "libero_sim", batch_size=2)
    with pytest.raises(ValueError, match="1 language instructions for a batch of 2"):
        processor.process_batch("libero_sim", observation["video"], observation["state"], ["only one"])


def test_get_action_records_its_stage_timings(libero, tiny_checkpoint):
    assert libero.last_timing == {} or set(libero.last_timing) == STAGES
    libero.get_action(example_observation(tiny_checkpoint, "libero_sim", batch_size=2), {"seed": 0})
    timing = libero.last_timing
    assert set(timing) == STAGES
    assert all(isinstance(v, float) and v >= 0.0 for v in timing.values())
    assert timing["model_ms"] > 0.0


def test_stage_timings_belong_to_the_calling_thread(libero, tiny_checkpoint):
    libero.get_action(example_observation(tiny_checkpoint, "libero_sim"), {"seed": 0})
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(libero.last_timing))
    thread.start()
    thread.join()
    assert seen == {} and set(libero.last_timing) == STAGES


def test_a_batch_equals_single_calls_row_by_row(libero, tiny_checkpoint):
    observation = example_observation(tiny_checkpoint, "libero_sim", batch_size=2, seed=5)
    batched, _ = libero.get_action(observation, {"seed": 10})
    for row in range(2):
        single_obs = {
            "video": {k: v[row : row + 1] for k, v in observation["video"].items()},
            "state": {k: v[row : row + 1] for k, v in observation["state"].items()},
            "language": {k: v[row : row + 1] for k, v in observation["language"].items()},
        }
        single, _ = libero.get_action(single_obs, {"seed": 10 + row})
        for key in single:
            np.testing.assert_allclose(batched[key][row], single[key][0], atol=1e-5)


def test_clip_outliers_overrides_the_checkpoint_state_clipping(tiny_checkpoint):
    unclipped = Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu", clip_outliers=False)
    observation = example_observation(tiny_checkpoint, "libero_sim")
    key = next(iter(observation["state"]))
    observation["state"][key] = observation["state"][key] + 10  # far above the statistics range (1e3 is refused unclipped)
    languages = ["pick"]
    state = unclipped.processor.process_batch("libero_sim", observation["video"], observation["state"], languages)["state"]
    assert unclipped.processor.config.clip_outliers is False and state.abs().max() > 1.0
    clipped = Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu", clip_outliers=True)
    state = clipped.processor.process_batch("libero_sim", observation["video"], observation["state"], languages)["state"]
    assert state.abs().max() <= 1.0


def test_clip_to_statistics_bounds_mean_std_action_keys(processor):
    configs = processor.config.modality_configs["libero_sim"]
    action_config = configs["action"]
    key = action_config.modality_keys[0]
    configs["action"] = dataclasses.replace(action_config, mean_std_embedding_keys=[key])
    try:
        huge = np.full((1, 40, 132), 1e3)
        params = processor.norm_params("libero_sim").action[key]
        free = processor.decode_action(huge, "libero_sim")[key]
        bounded = processor.decode_action(huge, "libero_sim", clip_to_statistics=True)[key]
    finally:
        configs["action"] = action_config
    assert (free > params.high + 1.0).all()
    np.testing.assert_allclose(bounded, np.broadcast_to(params.high, bounded.shape).astype(np.float32))


def test_a_strict_call_normalizes_its_states_once_and_acts_on_the_states_it_is_given(libero, tiny_checkpoint):
    """check_observation's normalization (which refuses a state beyond the model's float) serves the call after it; a
    check made before the states changed in place is not reused."""
    observation = example_observation(tiny_checkpoint, "libero_sim", seed=5)
    tags = []
    normalize = libero.processor.normalize_state
    libero.processor.normalize_state = lambda tag, states: tags.append(tag) or normalize(tag, states)
    try:
        action, _ = libero.get_action(observation, {"seed": 3})
        assert tags == ["libero_sim"]
        libero.check_observation(observation)
        for value in observation["state"].values():
            value *= 0.5
        libero.strict = False
        lenient, _ = libero.get_action(observation, {"seed": 3})
    finally:
        del libero.processor.normalize_state
        libero.strict = True
    strict, _ = libero.get_action(observation, {"seed": 3})
    assert any(not np.allclose(action[key], strict[key]) for key in action)
    for key in action:
        np.testing.assert_array_equal(strict[key], lenient[key])
