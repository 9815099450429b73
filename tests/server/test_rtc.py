"""Real-time chunking (RTC): the model-level inpainting, the processor's action encoding, Gr00tPolicy's
options["rtc"], the served path and the onnxruntime backend (model.md §2.7, §3.6)."""

import math

import numpy as np
import pytest
import torch
from serving import running_server

from gr00t_client import PolicyClient, PolicyServerError
from gr00t_server.model import TEST_TOKEN_IDS, Gr00tN1d7
from gr00t_server.model.action_head import rtc_velocity_strength
from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.policies.previous_action import PreviousActionError
from gr00t_server.processing import normalization as norm
from gr00t_server.processing.config import parse_statistics, processor_config_from_kwargs
from gr00t_server.processing.processor import Gr00tN1d7Processor
from gr00t_server.test_checkpoint import example_observation

GRID = (1, 4, 4)  # 16 patches -> 4 image tokens after the 2x2 merge
PATCH_DIM = 3 * 2 * 16 * 16


def make_inputs(config, seed=0):
    """Collated model inputs for one sample: a few text tokens around one small image."""
    g = torch.Generator().manual_seed(seed)
    image = torch.tensor(
        [TEST_TOKEN_IDS["vision_start_token_id"]] + [config.image_token_id] * 4 + [TEST_TOKEN_IDS["vision_end_token_id"]]
    )
    input_ids = torch.cat([torch.randint(10, 900, (3,), generator=g), image, torch.randint(10, 900, (4,), generator=g)])
    return {
        "input_ids": input_ids[None].long(),
        "attention_mask": torch.ones(1, input_ids.shape[0], dtype=torch.long),
        "pixel_values": torch.randn(16, PATCH_DIM, generator=g),
        "image_grid_thw": torch.tensor([GRID], dtype=torch.long),
        "state": torch.randn(1, 1, config.max_state_dim, generator=g),
        "embodiment_id": torch.tensor([2]),
    }


def reference_strength(horizon, overlap, frozen, rate):
    """The reference's vel_strength rows, computed independently in numpy."""
    strength = np.ones(horizon)
    strength[:frozen] = 0.0
    ramp = 1.0 - np.exp(-rate * np.linspace(0.0, 1.0, overlap - frozen + 2))
    strength[frozen:overlap] = (ramp / ramp[-1])[1:-1]
    return strength


# --- model level ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap, frozen, rate", [(6, 2, 6.0), (5, 5, 6.0), (7, 0, 0.5), (1, 0, 20.0)])
def test_velocity_strength_is_zero_when_frozen_then_the_normalized_exponential_ramp_then_one(overlap, frozen, rate):
    strength = rtc_velocity_strength(12, overlap, frozen, rate)
    assert strength.dtype == torch.float32 and strength.shape == (12,)
    np.testing.assert_allclose(strength.numpy(), reference_strength(12, overlap, frozen, rate), rtol=1e-6, atol=1e-7)
    assert (strength[:frozen] == 0).all() and (strength[overlap:] == 1).all()


@pytest.mark.parametrize("rate", [1e-6, 1e-9, 1e-20, 1e-300])
def test_a_tiny_ramp_rate_gives_the_linear_ramp_it_tends_to_not_frozen_rows(rate):
    """1 - exp(-rate * t) in float32 was 0 for every t at a rate <= ~1e-8: every ramp row got strength 0 (frozen)."""
    strength = rtc_velocity_strength(12, 7, 2, rate)
    np.testing.assert_allclose(strength[2:7].numpy(), np.arange(1, 6) / 6, rtol=1e-6)


def test_frozen_rows_hold_the_tail_of_the_previous_chunk(model, config):
    previous = torch.randn(1, config.action_horizon, config.max_action_dim, generator=torch.Generator().manual_seed(1))
    out = model.get_action(
        make_inputs(config), generator=torch.Generator().manual_seed(0), previous=previous,
        action_horizon=10, rtc_overlap_steps=5, rtc_frozen_steps=3,
    )["action_pred"]
    assert torch.equal(out[:, :3], previous[:, 5:8])  # x[:, :overlap] = previous[:, T_in-overlap:T_in]
    assert not torch.equal(out[:, 3:5], previous[:, 8:10])  # ramped rows move


def test_zero_overlap_is_bit_identical_to_sampling_without_rtc(model, config):
    inputs = make_inputs(config)
    plain = model.get_action(inputs, generator=torch.Generator().manual_seed(4))["action_pred"]
    previous = torch.randn(1, config.action_horizon, config.max_action_dim)
    rtc = model.get_action(
        inputs, generator=torch.Generator().manual_seed(4), previous=previous, rtc_overlap_steps=0, rtc_frozen_steps=0
    )["action_pred"]
    assert torch.equal(plain, rtc)


def test_rtc_never_writes_into_the_callers_noise(model, config):
    noise = torch.randn(1, config.action_horizon, config.max_action_dim)
    kept = noise.clone()
    previous = torch.zeros_like(noise)
    model.get_action(make_inputs(config), noise=noise, previous=previous, rtc_overlap_steps=4, rtc_frozen_steps=2)
    assert torch.equal(noise, kept)


def test_each_euler_step_scales_the_velocity_by_the_row_strength(config):
    torch.manual_seed(0)
    model = Gr00tN1d7(config).eval()
    decoder = model.action_head.action_decoder.layer2
    velocity = torch.linspace(-1, 1, config.max_action_dim)
    with torch.no_grad():  # a constant velocity per action dim makes the Euler sum checkable by hand
        decoder.W.zero_()
        decoder.b.zero_()
        decoder.b[2] = velocity
    noise = torch.randn(1, config.action_horizon, config.max_action_dim)
    previous = torch.randn(1, config.action_horizon, config.max_action_dim)
    horizon, overlap, frozen, rate = 12, 7, 2, 3.0
    out = model.get_action(
        make_inputs(config), noise=noise, previous=previous, action_horizon=horizon,
        rtc_overlap_steps=overlap, rtc_frozen_steps=frozen, rtc_ramp_rate=rate,
    )["action_pred"]
    start = noise.clone()
    start[:, :overlap] = previous[:, horizon - overlap : horizon]
    strength = torch.from_numpy(reference_strength(config.action_horizon, overlap, frozen, rate)).float()[None, :, None]
    steps = config.num_inference_timesteps
    expected = start
    for _ in range(steps):
        expected = expected + (1.0 / steps) * velocity * strength
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"action_horizon": 0}, r"action_horizon must be in \[1, model action_horizon\]"),
        ({"action_horizon": 10_000}, "action_horizon must be in"),
        ({"action_horizon": 4, "rtc_overlap_steps": 5}, r"rtc_overlap_steps must be in \[0, action_horizon\] = \[0, 4\], got 5"),
        ({"rtc_overlap_steps": 3, "rtc_frozen_steps": 4}, r"rtc_frozen_steps must be in \[0, rtc_overlap_steps\]"),
        ({"rtc_overlap_steps": -1}, "rtc_overlap_steps must be in"),
        ({"rtc_overlap_steps": True}, "rtc_overlap_steps must be an int"),
        ({"rtc_overlap_steps": 2.0}, "rtc_overlap_steps must be an int"),
        ({"rtc_ramp_rate": 0.0}, "rtc_ramp_rate must be a finite number > 0, got 0.0"),
        ({"rtc_ramp_rate": math.nan}, "rtc_ramp_rate must be a finite number > 0"),
        ({"rtc_ramp_rate": math.inf}, "rtc_ramp_rate must be a finite number > 0"),
    ],
)
def test_invalid_rtc_arguments_name_the_value_and_the_expected_range(model, config, arguments, message):
    previous = torch.zeros(1, config.action_horizon, config.max_action_dim)
    with pytest.raises(ValueError, match=message):
        model.get_action(make_inputs(config), previous=previous, **{"rtc_overlap_steps": 2, **arguments})


def test_previous_chunk_of_the_wrong_shape_or_with_nan_is_rejected(model, config):
    shape = (1, config.action_horizon, config.max_action_dim)
    with pytest.raises(ValueError, match=r"previous must have shape \(1, \d+, \d+\)"):
        model.get_action(make_inputs(config), previous=torch.zeros(1, 4, config.max_action_dim), rtc_overlap_steps=2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.get_action(make_inputs(config), previous=torch.full(shape, math.nan), rtc_overlap_steps=2)
    with pytest.raises(ValueError, match="need `previous`"):
        model.get_action(make_inputs(config), rtc_overlap_steps=2)


# --- processor: encode_action inverts decode_action -----------------------------------------------

ROUND_TRIP_KEYS = ["pos", "vel", "joints", "eef6d", "eefvec", "eefmat"]
ROUND_TRIP_DIMS = {"pos": 2, "vel": 2, "joints": 3, "eef6d": 9, "eefvec": 6, "eefmat": 16}
HORIZON = 3


def _stats(low, high, dim, rows=None):
    shape = (dim,) if rows is None else (rows, dim)
    low_arr, high_arr = np.full(shape, low, float), np.full(shape, high, float)
    if rows is not None:  # per-step relative ranges that differ by step
        low_arr = low_arr * (1 + np.arange(rows))[:, None]
        high_arr = high_arr * (1 + np.arange(rows))[:, None]
    return {"min": low_arr.tolist(), "max": high_arr.tolist(), "q01": (low_arr * 0.9).tolist(),
            "q99": (high_arr * 0.9).tolist(), "mean": np.full(shape, 0.25).tolist(), "std": np.full(shape, 2.0).tolist()}


@pytest.fixture(scope="module")
def round_trip_processor():
    """Absolute min/max (pos), mean/std (vel), relative joints and relative EEF keys in all three formats."""
    specs = {
        "pos": ("ABSOLUTE", "NON_EEF", "DEFAULT", None),
        "vel": ("ABSOLUTE", "NON_EEF", "DEFAULT", None),
        "joints": ("RELATIVE", "NON_EEF", "DEFAULT", "joint_state"),
        "eef6d": ("RELATIVE", "EEF", "XYZ_ROT6D", None),
        "eefvec": ("RELATIVE", "EEF", "XYZ_ROTVEC", None),
        "eefmat": ("RELATIVE", "EEF", "DEFAULT", None),
    }
    state_keys = {"joint_state": 3, "eef6d": 9, "eefvec": 6, "eefmat": 16}
    configs = {"robot": {
        "video": {"delta_indices": [0], "modality_keys": ["cam"]},
        "state": {"delta_indices": [-1, 0], "modality_keys": list(state_keys)},
        "action": {
            "delta_indices": list(range(HORIZON)),
            "modality_keys": ROUND_TRIP_KEYS,
            "mean_std_embedding_keys": ["vel"],
            "action_configs": [dict(zip(("rep", "type", "format", "state_key"), specs[k])) for k in ROUND_TRIP_KEYS],
        },
        "language": {"delta_indices": [0], "modality_keys": ["task"]},
    }}
    config = processor_config_from_kwargs(
        {"modality_configs": configs, "max_state_dim": 40, "max_action_dim": 40, "max_action_horizon": 5,
         "use_relative_action": True, "use_percentiles": True}
    )
    statistics = parse_statistics({"robot": {
        "state": {k: _stats(-5, 5, d) for k, d in state_keys.items()},
        "action": {k: _stats(-3, 3, d) for k, d in ROUND_TRIP_DIMS.items()},
        "relative_action": {k: _stats(-2, 2, ROUND_TRIP_DIMS[k], rows=HORIZON + 1) for k in specs if specs[k][0] == "RELATIVE"},
    }})
    return Gr00tN1d7Processor(config, statistics, {"robot": 3}, tokenizer=None)


def _random_rotations(rng, count):
    return norm.rotvec_to_matrix(rng.uniform(-0.8, 0.8, size=(count, 3)))


def _poses(translations, rotations, action_format):
    matrix = np.zeros(translations.shape[:-1] + (4, 4))
    matrix[..., :3, :3], matrix[..., :3, 3], matrix[..., 3, 3] = rotations, translations, 1.0
    return norm.matrix_to_pose(matrix, action_format)


@pytest.fixture(scope="module")
def round_trip_case():
    """(absolute actions (B=2, T=3) inside the statistics ranges, raw states (B, 2, D)) for every key."""
    rng = np.random.default_rng(0)
    batch = 2
    states = {"joint_state": rng.uniform(-1, 1, (batch, 2, 3))}
    actions = {
        "pos": rng.uniform(-2.5, 2.5, (batch, HORIZON, 2)),
        "vel": rng.normal(0.0, 4.0, (batch, HORIZON, 2)),  # mean/std keys are never clipped
        "joints": states["joint_state"][:, -1:, :] + rng.uniform(-1.5, 1.5, (batch, HORIZON, 3)),
    }
    for key, action_format in (("eef6d", "XYZ_ROT6D"), ("eefvec", "XYZ_ROTVEC"), ("eefmat", "DEFAULT")):
        rotations = _random_rotations(rng, batch * 2).reshape(batch, 2, 3, 3)
        reference = _poses(rng.uniform(-1, 1, (batch, 2, 3)), rotations, action_format)
        # small relative motions, composed onto the last reference step: well inside the relative ranges
        relative = _poses(rng.uniform(-0.3, 0.3, (batch, HORIZON, 3)),
                          norm.rotvec_to_matrix(rng.uniform(-0.3, 0.3, (batch, HORIZON, 3))), action_format)
        states[key] = reference
        actions[key] = norm.decode_relative(key, relative, reference, "EEF", action_format)
    return {k: v.astype(np.float32) for k, v in actions.items()}, {k: v.astype(np.float32) for k, v in states.items()}


def test_encode_action_gives_the_padded_normalized_layout(round_trip_processor, round_trip_case):
    actions, states = round_trip_case
    encoded = round_trip_processor.encode_action(actions, "robot", states)
    assert encoded.dtype == np.float32 and encoded.shape == (2, HORIZON, 40)
    assert (encoded[..., sum(ROUND_TRIP_DIMS.values()) :] == 0).all()
    # pos uses q01/q99 = -2.7 / 2.7; vel is (x - 0.25) / 2
    np.testing.assert_allclose(encoded[..., 0:2], 2 * (actions["pos"] + 2.7) / 5.4 - 1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoded[..., 2:4], (actions["vel"] - 0.25) / 2.0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ROUND_TRIP_KEYS)
def test_decode_of_encode_gives_back_the_actions(round_trip_processor, round_trip_case, key):
    actions, states = round_trip_case
    decoded = round_trip_processor.decode_action(round_trip_processor.encode_action(actions, "robot", states), "robot", states)
    np.testing.assert_allclose(decoded[key], actions[key], rtol=1e-5, atol=2e-5)


def test_relative_joint_encoding_subtracts_the_last_state_step_and_uses_per_step_ranges(round_trip_processor, round_trip_case):
    actions, states = round_trip_case
    encoded = round_trip_processor.encode_action(actions, "robot", states)
    relative = actions["joints"] - states["joint_state"][:, -1:, :]
    scale = (1 + np.arange(HORIZON))[None, :, None] * 2.0  # relative min/max (not q01/q99) of step t: +-2 (t+1)
    np.testing.assert_allclose(encoded[..., 4:7], relative / scale, rtol=1e-5, atol=1e-6)


def test_encoding_a_shorter_chunk_uses_the_first_rows_statistics(round_trip_processor, round_trip_case):
    actions, states = round_trip_case
    full = round_trip_processor.encode_action(actions, "robot", states)
    head = round_trip_processor.encode_action({k: v[:, :2] for k, v in actions.items()}, "robot", states)
    np.testing.assert_allclose(head, full[:, :2], rtol=1e-6, atol=1e-7)


def test_values_outside_the_range_are_clipped_like_decode_clips_them(round_trip_processor, round_trip_case):
    actions, states = round_trip_case
    actions = dict(actions, pos=np.full((2, HORIZON, 2), 100.0, np.float32))
    encoded = round_trip_processor.encode_action(actions, "robot", states)
    np.testing.assert_array_equal(encoded[..., 0:2], 1.0)


def test_frozen_rows_outside_the_statistics_come_back_clipped_only_for_min_max_keys(round_trip_processor,
                                                                                   round_trip_case):
    """What RTC's frozen rows go through (encode, then decode): serving.md's RTC paragraph says the same."""
    actions, states = round_trip_case
    last_state = states["joint_state"][:, -1:, :].astype(np.float64)
    far = dict(actions, pos=np.full((2, HORIZON, 2), 100.0, np.float32), vel=np.full((2, HORIZON, 2), 100.0, np.float32),
               joints=np.repeat(last_state + 100.0, HORIZON, axis=1).astype(np.float32))
    encoded = round_trip_processor.encode_action(far, "robot", states)
    decoded = round_trip_processor.decode_action(encoded, "robot", states)
    np.testing.assert_allclose(decoded["pos"], 2.7, rtol=1e-6)  # absolute min/max: its range (q01/q99 here)
    np.testing.assert_allclose(decoded["vel"], 100.0, rtol=1e-6)  # mean/std: as given
    relative_max = 2.0 * (1 + np.arange(HORIZON))[None, :, None]  # relative min/max of step t, around the state
    np.testing.assert_allclose(decoded["joints"], last_state + relative_max, rtol=1e-5)
    clipped = round_trip_processor.decode_action(encoded, "robot", states, clip_to_statistics=True)
    np.testing.assert_allclose(clipped["vel"], 2.7, rtol=1e-6)  # an absolute mean/std key with --clip-outliers


def test_serving_md_says_which_frozen_rows_are_clipped():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "serving.md").read_text()
    paragraph = " ".join(text[text.index("Relative action keys are re-expressed"):].split("\n\n")[0].split())
    assert "as every returned action is" not in paragraph  # mean/std and relative keys are not clipped to the range
    for says in ("absolute min/max key", "relative min/max key", "mean/std key", "--clip-outliers"):
        assert says in paragraph, paragraph


def test_encoding_relative_keys_needs_the_reference_states(round_trip_processor, round_trip_case):
    actions, _states = round_trip_case
    with pytest.raises(ValueError, match="State dict required for absolute->relative conversion of key 'joints'"):
        round_trip_processor.encode_action(actions, "robot", None)


def test_encoding_names_a_key_of_the_wrong_shape(round_trip_processor, round_trip_case):
    actions, states = round_trip_case
    with pytest.raises(ValueError, match=r"Action key 'vel' must have shape \(B, T, 2\)"):
        round_trip_processor.encode_action(dict(actions, vel=np.zeros((2, HORIZON, 3))), "robot", states)


# --- policy level ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def libero(tiny_checkpoint):
    return Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu")


@pytest.fixture(scope="module")
def new_robot(tiny_checkpoint):
    return Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")


@pytest.fixture(scope="module")
def libero_case(libero, tiny_checkpoint):
    """(observation with B=2, a previous chunk from an earlier call: inside the statistics range)."""
    observation = example_observation(tiny_checkpoint, "libero_sim", batch_size=2, seed=3)
    previous, _ = libero.get_action(observation, {"seed": 11})
    return observation, previous


def rtc(previous, overlap, frozen, **extra):
    return {"previous_action": previous, "overlap_steps": overlap, "frozen_steps": frozen, **extra}


@pytest.mark.parametrize("horizon, overlap, frozen", [(16, 6, 3), (8, 5, 5), (4, 4, 1)])
def test_first_frozen_rows_equal_the_overlap_rows_of_the_previous_chunk(libero, libero_case, horizon, overlap, frozen):
    observation, previous = libero_case
    previous = {k: v[:, :horizon] for k, v in previous.items()}
    action, _ = libero.get_action(observation, {"seed": 5, "rtc": rtc(previous, overlap, frozen)})
    for key, value in action.items():
        assert value.shape == (2, 16, 1)
        start = horizon - overlap
        np.testing.assert_allclose(value[:, :frozen], previous[key][:, start : start + frozen], atol=1e-5, err_msg=key)


def test_rows_after_the_frozen_ones_are_denoised_by_the_model(libero, libero_case):
    observation, previous = libero_case
    plain, _ = libero.get_action(observation, {"seed": 5})
    action, _ = libero.get_action(observation, {"seed": 5, "rtc": rtc(previous, 6, 2)})
    moved = [not np.allclose(action[k][:, 2:6], previous[k][:, 12:16], atol=1e-6) for k in action]
    assert any(moved), "ramped rows [frozen, overlap) must move away from the previous chunk"
    # rows from `overlap` on start from the same noise but see the inpainted rows, so the prediction changes
    assert any(not np.array_equal(action[k][:, 6:], plain[k][:, 6:]) for k in action)


def test_zero_overlap_gives_exactly_the_result_without_rtc(libero, libero_case):
    observation, previous = libero_case
    plain, _ = libero.get_action(observation, {"seed": 9})
    action, _ = libero.get_action(observation, {"seed": 9, "rtc": rtc(previous, 0, 0)})
    for key in plain:
        np.testing.assert_array_equal(action[key], plain[key])


def test_rtc_composes_with_seed_and_with_explicit_noise(libero, libero_case):
    observation, previous = libero_case
    noise = np.stack([torch.randn((40, 132), generator=torch.Generator().manual_seed(21 + r)).numpy() for r in range(2)])
    seeded, _ = libero.get_action(observation, {"seed": 21, "rtc": rtc(previous, 6, 3, ramp_rate=2.0)})
    explicit, _ = libero.get_action(observation, {"noise": noise, "rtc": rtc(previous, 6, 3, ramp_rate=2.0)})
    other_seed, _ = libero.get_action(observation, {"seed": 22, "rtc": rtc(previous, 6, 3, ramp_rate=2.0)})
    for key in seeded:
        np.testing.assert_array_equal(seeded[key], explicit[key])
        np.testing.assert_allclose(other_seed[key][:, :3], seeded[key][:, :3], atol=1e-6)  # frozen: seed-independent
    assert any(not np.array_equal(seeded[k][:, 6:], other_seed[k][:, 6:]) for k in seeded)


def test_ramp_rate_changes_only_the_ramped_and_later_rows(libero, libero_case):
    observation, previous = libero_case
    slow, _ = libero.get_action(observation, {"seed": 2, "rtc": rtc(previous, 8, 2, ramp_rate=0.5)})
    fast, _ = libero.get_action(observation, {"seed": 2, "rtc": rtc(previous, 8, 2, ramp_rate=20.0)})
    for key in slow:
        np.testing.assert_array_equal(slow[key][:, :2], fast[key][:, :2])
    assert any(not np.array_equal(slow[k][:, 2:8], fast[k][:, 2:8]) for k in slow)


def test_a_served_tiny_ramp_rate_denoises_the_ramped_rows_as_a_slow_one_does(libero, libero_case):
    """At ramp_rate 1e-9 the ramped rows came back exactly as if they were frozen; they follow the (linear) ramp."""
    observation, previous = libero_case
    with running_server(libero) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        frozen, _ = client.get_action(observation, {"seed": 2, "rtc": rtc(previous, 8, 8)})
        slow, _ = client.get_action(observation, {"seed": 2, "rtc": rtc(previous, 8, 2, ramp_rate=1e-6)})
        tiny, _ = client.get_action(observation, {"seed": 2, "rtc": rtc(previous, 8, 2, ramp_rate=1e-9)})
    for key in slow:
        np.testing.assert_allclose(tiny[key], slow[key], atol=1e-4)
    assert any(not np.allclose(tiny[k][:, 2:8], frozen[k][:, 2:8], atol=1e-4) for k in tiny)


def test_relative_keys_are_encoded_against_the_current_state(new_robot, tiny_checkpoint):
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, seed=5)
    earlier, _ = new_robot.get_action(observation, {"seed": 1})
    previous = {k: v[:, :4] for k, v in earlier.items()}  # rows 0..3 land on rows 0..3: the same relative ranges
    action, _ = new_robot.get_action(observation, {"seed": 2, "rtc": rtc(previous, 4, 2)})
    np.testing.assert_allclose(action["joints"][:, :2], previous["joints"][:, :2], atol=1e-5)  # relative joints
    np.testing.assert_allclose(action["gripper"][:, :2], previous["gripper"][:, :2], atol=1e-5)
    np.testing.assert_allclose(action["eef_9d"][:, :2, :3], previous["eef_9d"][:, :2, :3], atol=1e-5)  # EEF xyz
    # the rot6d part may leave the tiny checkpoint's relative ranges and be clipped: frozen rows then hold what
    # decoding the clipped encoding gives
    states = {k: v for k, v in observation["state"].items()}
    encoded = new_robot.processor.encode_action(previous, "new_embodiment", states)
    padded = np.zeros((1, 16, encoded.shape[-1]), np.float32)
    padded[:, :4] = encoded
    expected = new_robot.processor.decode_action(padded, "new_embodiment", states)
    for key in action:
        np.testing.assert_allclose(action[key][:, :2], expected[key][:, :2], atol=1e-5, err_msg=key)


def _replace(previous, key_index, transform):
    key = list(previous)[key_index]
    return dict(previous, **{key: transform(previous[key])})


FIRST = "x"  # the first libero action key (dim 1); the second is "y"
INVALID_RTC = {
    "not a map": (lambda p: "overlap 2", r"options\['rtc'\] must be a map"),
    "no previous_action": (lambda p: {"overlap_steps": 2, "frozen_steps": 1}, r"missing keys \['previous_action'\]"),
    "unknown key": (lambda p: rtc(p, 2, 1, ramp=1.0), r"unknown keys \['ramp'\]"),
    "missing action key": (lambda p: rtc({k: v for k, v in p.items() if k != FIRST}, 2, 1), r"missing \['x'\]"),
    "extra action key": (lambda p: rtc(dict(p, extra=p[FIRST]), 2, 1), r"extra \['extra'\]"),
    "4-D array": (lambda p: rtc(_replace(p, 0, lambda v: v[..., None]), 2, 1),
                  r"\['x'\] must be a float array of shape \(B=2, T, 1\) with 1 <= T <= 16; got dtype float32 shape"),
    "wrong batch": (lambda p: rtc(_replace(p, 0, lambda v: v[:1]), 2, 1), r"\['x'\] must be a float array of shape \(B=2, T, 1\)"),
    "wrong width": (lambda p: rtc(_replace(p, 0, lambda v: np.zeros((2, 16, 3), np.float32)), 2, 1),
                    r"\['x'\] must be .* got dtype float32 shape \(2, 16, 3\)"),
    "keys disagree on T": (lambda p: rtc(_replace(p, 1, lambda v: v[:, :8]), 2, 1), r"\['y'\] must be a float array .* with T = 16"),
    "T above the horizon": (lambda p: rtc({k: np.concatenate([v, v], axis=1) for k, v in p.items()}, 2, 1), r"with 1 <= T <= 16"),
    "integer dtype": (lambda p: rtc(_replace(p, 0, lambda v: v.astype(np.int64)), 2, 1), "got dtype int64"),
    "NaN": (lambda p: rtc(_replace(p, 0, lambda v: np.full_like(v, np.nan)), 2, 1), r"\['x'\] contains NaN or infinite values"),
    "overlap above T": (lambda p: rtc(p, 17, 1), r"'overlap_steps'\] must be an int in \[0, T of previous_action\] = \[0, 16\], got 17"),
    "frozen above overlap": (lambda p: rtc(p, 2, 3), r"'frozen_steps'\] must be an int in \[0, overlap_steps\] = \[0, 2\], got 3"),
    "negative overlap": (lambda p: rtc(p, -1, 0), r"'overlap_steps'\] must be an int"),
    "bool overlap": (lambda p: rtc(p, True, 0), r"'overlap_steps'\] must be an int"),
    "float overlap": (lambda p: rtc(p, 2.5, 0), r"'overlap_steps'\] must be an int"),
    "zero ramp rate": (lambda p: rtc(p, 2, 1, ramp_rate=0.0), r"'ramp_rate'\] must be a finite number > 0, got 0.0"),
    "infinite ramp rate": (lambda p: rtc(p, 2, 1, ramp_rate=math.inf), r"'ramp_rate'\] must be a finite number > 0"),
    "string ramp rate": (lambda p: rtc(p, 2, 1, ramp_rate="6"), r"'ramp_rate'\] must be a finite number > 0"),
}


@pytest.mark.parametrize("case", list(INVALID_RTC))
def test_invalid_rtc_options_are_rejected_with_a_clear_message(libero, libero_case, case):
    observation, previous = libero_case
    assert list(previous)[:2] == [FIRST, "y"]
    build, message = INVALID_RTC[case]
    with pytest.raises(ValueError, match=message):
        libero.get_action(observation, {"seed": 0, "rtc": build(previous)})


def test_a_served_policy_answers_rtc_requests_from_a_policy_client(libero, libero_case):
    observation, previous = libero_case
    options = {"seed": 5, "rtc": rtc(previous, 6, 3, ramp_rate=4.0)}
    local, _ = libero.get_action(observation, options)
    with running_server(libero) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        served, _info = client.get_action(observation, options)
        with pytest.raises(PolicyServerError, match="'frozen_steps'\\] must be an int in"):
            client.get_action(observation, {"rtc": rtc(previous, 2, 3)})
    for key in local:
        np.testing.assert_array_equal(served[key], local[key])
        np.testing.assert_allclose(served[key][:, :3], previous[key][:, 10:13], atol=1e-5)


# --- backends -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_head_policy(tiny_checkpoint, libero_case, tmp_path_factory):
    """A libero policy whose action-head sub-modules run in ONNX Runtime (fp32 export of mode action_head)."""
    pytest.importorskip("onnxruntime")
    from gr00t_server.backends import apply_inference_mode
    from gr00t_server.backends.export import export_policy

    observation = {m: {k: v[:1] for k, v in part.items()} for m, part in libero_case[0].items()}
    exporter = Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu", dtype="fp32")
    out = tmp_path_factory.mktemp("onnx_rtc_head")
    export_policy(exporter, observation, out, mode="action_head")
    policy = Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu", dtype="fp32")
    swapped = apply_inference_mode(policy, "onnxruntime", onnx_dir=out)
    assert "dit" in swapped and "action_encoder" in swapped
    return policy


def test_rtc_frozen_rows_hold_with_the_onnxruntime_action_head(onnx_head_policy, libero, libero_case):
    observation, previous = libero_case
    observation = {m: {k: v[:1] for k, v in part.items()} for m, part in observation.items()}
    previous = {k: v[:1] for k, v in previous.items()}
    options = {"seed": 3, "rtc": rtc(previous, 6, 3)}
    action, _ = onnx_head_policy.get_action(observation, options)
    expected, _ = libero.get_action(observation, options)
    for key in action:
        np.testing.assert_allclose(action[key][:, :3], previous[key][:, 10:13], atol=1e-5, err_msg=key)
        np.testing.assert_allclose(action[key], expected[key], atol=1e-4, err_msg=key)


# --- client chunking ------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["nested", "sim-wrapper"])
def test_async_chunker_with_rtc_continues_the_old_chunk_through_a_server(libero, wrapped):
    """ActionChunker(rtc_frozen_steps=2) over the wire: the prefetched chunk keeps the step the old chunk had
    planned for the next call, where a plain prefetch jumps to the new prediction."""
    from gr00t_client import ActionChunker
    from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper

    policy = Gr00tSimPolicyWrapper(libero) if wrapped else libero
    observations = [example_observation(libero.checkpoint_dir, "libero_sim", batch_size=1, seed=20 + t) for t in range(4)]
    if wrapped:
        observations = [
            {**{f"{m}.{k}": v for m in ("video", "state") for k, v in o[m].items()},
             **{k: [row[0] for row in v] for k, v in o["language"].items()}}
            for o in observations
        ]
    first_chunk, _ = policy.get_action(observations[0], {"seed": 0})
    executed = {}
    with running_server(policy) as server:
        for rtc_frozen_steps in (None, 2):
            with PolicyClient(port=server.port, timeout_ms=60000) as client, ActionChunker(
                client, asynchronous=True, prefetch_steps=13, rtc_frozen_steps=rtc_frozen_steps
            ) as chunker:
                for t in range(3):  # prefetch at t=2 (13 of 16 steps left)
                    chunker.get_action(observations[t], {"seed": t})
                assert chunker.wait_for_prefetch(timeout=60)
                step, info = chunker.get_action(observations[3], {"seed": 3})  # merges: new[1] lines up with old[3]
                assert info["merged_env_ids"] == [0]
                executed[rtc_frozen_steps] = step
    for key, chunk in first_chunk.items():
        np.testing.assert_allclose(executed[2][key], chunk[:, 3], atol=1e-5)  # frozen: the old plan holds
    # without RTC the step jumps to the new prediction
    assert any(not np.allclose(executed[None][key], chunk[:, 3], atol=1e-3) for key, chunk in first_chunk.items())


@pytest.mark.parametrize("rotation, case", [(0.0, "all zero"), (1000.0, "parallel rows")])
def test_a_degenerate_rotation_in_the_previous_chunk_is_refused_naming_the_key_and_rows(new_robot, tiny_checkpoint,
                                                                                         rotation, case):
    """An all-zero previous chunk failed only inside the model ("previous contains NaN or infinite values"), two
    parallel rot6d rows were turned into an arbitrary rotation and acted on."""
    import warnings

    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, seed=5)
    earlier, _ = new_robot.get_action(observation, {"seed": 1})
    previous = {k: v.copy() for k, v in earlier.items()}
    previous["eef_9d"][0, 14, 3:9] = rotation
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match=r"^options\['rtc'\]\['previous_action'\]\['eef_9d'\] \(XYZ_ROT6D pose\) "
                                             r"has a degenerate rotation at \(row, step\) \[\(0, 14\)\]"):
            new_robot.get_action(observation, {"seed": 2, "rtc": rtc(previous, 4, 2)})


def test_a_degenerate_rotation_before_the_overlap_is_not_used_and_not_refused(new_robot, tiny_checkpoint):
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, seed=5)
    earlier, _ = new_robot.get_action(observation, {"seed": 1})
    previous = {k: v.copy() for k, v in earlier.items()}
    previous["eef_9d"][0, :12, 3:9] = 0.0
    action, _ = new_robot.get_action(observation, {"seed": 2, "rtc": rtc(previous, 4, 2)})
    np.testing.assert_allclose(action["gripper"][:, :2], previous["gripper"][:, 12:14], atol=1e-5)


@pytest.fixture(scope="module")
def mean_std_gripper_robot(tiny_checkpoint, tmp_path_factory):
    """new_embodiment with its absolute 'gripper' action normalized by mean/std (not clipped on encode), as many real
    checkpoints' keys are."""
    import json
    import shutil

    checkpoint = tmp_path_factory.mktemp("mean_std_gripper") / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    path = checkpoint / "processor_config.json"
    config = json.loads(path.read_text())
    config["processor_kwargs"]["modality_configs"]["new_embodiment"]["action"]["mean_std_embedding_keys"] = ["gripper"]
    path.write_text(json.dumps(config))
    return Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")


HUGE_PREVIOUS = r"^options\['rtc'\]\['previous_action'\]\['gripper'\] step 12 normalizes to \S+ against the checkpoint's"


@pytest.mark.parametrize("value", [1e30, 3e38])
def test_a_huge_finite_previous_action_is_refused_naming_the_option_key_and_step(mean_std_gripper_robot,
                                                                                  tiny_checkpoint, value):
    """1e30 made the model's output NaN, blamed on the weights and on action key 'eef_9d'; 3e38 overflowed the float32
    encoding: 'previous contains NaN or infinite values', naming neither the option nor the key."""
    import warnings

    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, seed=5)
    earlier, _ = mean_std_gripper_robot.get_action(observation, {"seed": 1})
    previous = {k: v.copy() for k, v in earlier.items()}
    previous["gripper"][:, 12:] = value
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match=HUGE_PREVIOUS):
            mean_std_gripper_robot.get_action(observation, {"seed": 2, "rtc": rtc(previous, 4, 2)})


def test_a_served_policy_refuses_a_huge_previous_action_naming_the_option_key(mean_std_gripper_robot, tiny_checkpoint):
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, seed=5)
    earlier, _ = mean_std_gripper_robot.get_action(observation, {"seed": 1})
    previous = dict(earlier, gripper=np.full_like(earlier["gripper"], 1e30))
    with running_server(mean_std_gripper_robot) as server:  # a free port of the system's choosing
        with PolicyClient(port=server.port, timeout_ms=60000) as client:
            with pytest.raises(PolicyServerError, match=r"options\['rtc'\]\['previous_action'\]\['gripper'\] step 12 "):
                client.get_action(observation, {"seed": 2, "rtc": rtc(previous, 4, 2)})
            assert client.get_action(observation, {"seed": 2, "rtc": rtc(earlier, 4, 2)})[0].keys() == earlier.keys()


@pytest.mark.parametrize("key, value, refusal", [
    ("gripper", 1e300, r"step 12 is 1e\+300, beyond float32's range"),
    ("joints", 1e300, r"step 12 is 1e\+300, beyond float32's range"),
    ("gripper", 1e30, r"step 12 normalizes to \S+ against the checkpoint's statistics \(sent 1e\+30\)"),
], ids=["absolute_past_float32", "relative_past_float32", "absolute_past_1000"])
def test_a_huge_previous_action_on_a_min_max_key_is_refused_not_clipped_to_the_statistics_edge(new_robot,
                                                                                               tiny_checkpoint,
                                                                                               key, value, refusal):
    """Min/max keys are clipped on encoding, and the outlier check looked at the clipped values: 1e300 and 1e30 came
    back as the statistics' edge in a frozen row, where serving.md says they are refused."""
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, seed=5)
    earlier, _ = new_robot.get_action(observation, {"seed": 1})
    previous = {k: v.astype(np.float64) for k, v in earlier.items()}
    previous[key][0, 12, 0] = value
    with running_server(new_robot) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=rf"options\['rtc'\]\['previous_action'\]\['{key}'\] {refusal}"):
            client.get_action(observation, {"seed": 2, "rtc": rtc(previous, 8, 6)})
        assert client.get_action(observation, {"seed": 2, "rtc": rtc(earlier, 8, 6)})[0].keys() == earlier.keys()


def test_a_returned_previous_action_is_served_after_a_little_drift_on_a_relative_joint_of_a_narrow_range(tiny_checkpoint,
                                                                                                         tmp_path):
    """A relative min/max key's range is of the motion around the state: on a joint that barely moved in training
    (a range of 1e-6), a 2 mrad state drift put the chunk get_action had returned at -2000 of that range, and the
    first version of the unclipped check refused it ("send actions in the units get_action returned", which they
    were). Its rows are clipped to that range, as serving.md says."""
    import json
    import shutil

    checkpoint = tmp_path / "narrow"
    shutil.copytree(tiny_checkpoint, checkpoint)
    stats_file = checkpoint / "statistics.json"
    stats = json.loads(stats_file.read_text())
    joints = stats["new_embodiment"]["relative_action"]["joints"]
    for name, value in (("min", -1e-6), ("q01", -1e-6), ("max", 1e-6), ("q99", 1e-6), ("mean", 0.0), ("std", 5e-7)):
        for row in joints[name]:
            row[6] = value
    stats_file.write_text(json.dumps(stats))
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(checkpoint, "new_embodiment", batch_size=1, seed=5)
    previous, _ = policy.get_action(observation, {"seed": 1})
    later = {**observation, "state": {k: v.copy() for k, v in observation["state"].items()}}
    later["state"]["joints"][..., 6] += 0.002
    action, _ = policy.get_action(later, {"seed": 2, "rtc": rtc(previous, 4, 2)})
    state = later["state"]["joints"][0, -1, 6]
    assert np.all(np.abs(action["joints"][0, :2, 6] - state) <= 1e-6 + 1e-6)  # the frozen rows, clipped to the range


def _narrow_relative_checkpoint(tiny_checkpoint, tmp_path, mean_std, spread=1e-5):
    """tiny_checkpoint with relative 'joints' column 0 of a joint that barely moved in training (a relative std or
    range of `spread`), z-scored when `mean_std`."""
    import json
    import shutil

    checkpoint = tmp_path / "narrow"
    shutil.copytree(tiny_checkpoint, checkpoint)
    if mean_std:
        path = checkpoint / "processor_config.json"
        config = json.loads(path.read_text())
        config["processor_kwargs"]["modality_configs"]["new_embodiment"]["action"]["mean_std_embedding_keys"] = [
            "joints"]
        path.write_text(json.dumps(config))
    stats_file = checkpoint / "statistics.json"
    stats = json.loads(stats_file.read_text())
    joints = stats["new_embodiment"]["relative_action"]["joints"]
    for name, value in (("min", -spread), ("q01", -spread), ("max", spread), ("q99", spread), ("mean", 0.0),
                        ("std", spread)):
        for row in joints[name]:
            row[0] = value
    stats_file.write_text(json.dumps(stats))
    return checkpoint


def test_a_returned_previous_action_is_served_after_a_little_drift_on_a_relative_mean_std_joint(tiny_checkpoint,
                                                                                                tmp_path):
    """A relative mean/std key's normalized value holds the state drift over its std: a 20 mrad drift on a joint of
    std 1e-5 put get_action's own chunk at -2000, refused as if it were in other units (every ActionChunker prefetch
    with rtc_frozen_steps failed). Its frozen rows come back as sent."""
    checkpoint = _narrow_relative_checkpoint(tiny_checkpoint, tmp_path, mean_std=True)
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(checkpoint, "new_embodiment", batch_size=1, seed=5)
    previous, _ = policy.get_action(observation, {"seed": 1})
    later = {**observation, "state": {k: v.copy() for k, v in observation["state"].items()}}
    later["state"]["joints"][..., 0] += 0.02
    action, _ = policy.get_action(later, {"seed": 2, "rtc": rtc(previous, 8, 3)})
    np.testing.assert_allclose(action["joints"][:, :3], previous["joints"][:, 8:11], atol=1e-4)


def test_a_bfloat16_model_serves_frozen_rows_it_did_not_move_however_far_they_normalize(tiny_checkpoint, tmp_path):
    """A bf16 model gets the RTC start rows rounded to bf16: a relative mean/std row at 6e5 (60 mrad of drift on a
    joint of std 1e-7) came back rounded by about 1000, judged as the model moving it and refused as damaged weights,
    though float32 served the same request. The guard judges the rows as the model received them."""
    checkpoint = _narrow_relative_checkpoint(tiny_checkpoint, tmp_path, mean_std=True, spread=1e-7)
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu", dtype="bfloat16")
    observation = example_observation(checkpoint, "new_embodiment", batch_size=1, seed=5)
    previous, _ = policy.get_action(observation, {"seed": 1})
    later = {**observation, "state": {k: v.copy() for k, v in observation["state"].items()}}
    later["state"]["joints"][..., 0] += 0.06
    action, _ = policy.get_action(later, {"seed": 2, "rtc": rtc(previous, 8, 3)})
    np.testing.assert_allclose(action["joints"][:, :3], previous["joints"][:, 8:11], atol=5e-3)  # bf16 rounding


@pytest.mark.parametrize("mean_std", [False, True], ids=["relative_min_max", "relative_mean_std"])
def test_a_relative_previous_action_in_other_units_is_refused_before_it_is_re_expressed(tiny_checkpoint, tmp_path,
                                                                                        mean_std):
    """A relative key is told apart from other units by its absolute value, whatever the state: 1e6 on a joint whose
    training values lie within +-1.1 was clipped to the relative range of a min/max key (the frozen row was the
    state, not what was sent) and blamed on the statistics of a mean/std one."""
    checkpoint = _narrow_relative_checkpoint(tiny_checkpoint, tmp_path, mean_std=mean_std)
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(checkpoint, "new_embodiment", batch_size=1, seed=5)
    previous, _ = policy.get_action(observation, {"seed": 1})
    sent = {k: v.copy() for k, v in previous.items()}
    sent["joints"][0, 12, 1] = 1e6
    with pytest.raises(ValueError, match=r"^options\['rtc'\]\['previous_action'\]\['joints'\] step 12 holds 1e\+06 in "
                                         r"column 1, beyond 1000 times its action statistics' magnitude 1"):
        policy.get_action(observation, {"seed": 2, "rtc": rtc(sent, 8, 3)})


def test_a_float16_model_refuses_a_previous_action_that_normalizes_beyond_float16_naming_the_key_and_step(
        tiny_checkpoint, tmp_path):
    """A relative mean/std row normalizing to about 1e4 (0.1 rad of drift on a joint of std 1e-5) is finite in float32
    but inf in float16: the model then made NaN actions refused as another key's output and blamed on the weights.
    It is refused before the model runs, naming the option key, the step and the model's float, as a state is."""
    checkpoint = _narrow_relative_checkpoint(tiny_checkpoint, tmp_path, mean_std=True)
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu", dtype="float16")
    observation = example_observation(checkpoint, "new_embodiment", batch_size=1, seed=5)
    previous, _ = policy.get_action(observation, {"seed": 1})
    later = {**observation, "state": {k: v.copy() for k, v in observation["state"].items()}}
    later["state"]["joints"][..., 0] += 1.0
    with pytest.raises(PreviousActionError, match=r"^options\['rtc'\]\['previous_action'\]\['joints'\] step 8 "
                                                  r"normalizes to .* beyond float16.*serve in bf16 or fp32"):
        policy.get_action(later, {"seed": 2, "rtc": rtc(previous, 8, 3)})
