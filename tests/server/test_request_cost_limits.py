"""What one get_action may cost a Gr00tPolicy server: the vision tokens of all its frames together, its denoising
steps, and the square a letter-boxed frame is padded to (held to --max-image-pixels and padded one frame at a time)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tracemalloc

import numpy as np
import pytest
from serving import NoServer, running_server

from gr00t_client import PolicyClient, PolicyServerError
from gr00t_client.policy import ObservationError
from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.processing.image import (eval_image_transform_batch, eval_image_transform_torchvision_style_batch,
                                           letter_box_pad)
from gr00t_server.processing.processor import Gr00tN1d7Processor
from gr00t_server.processing.vision_patches import num_image_tokens, patchify_batch
from gr00t_server.serving.limits import MAX_LIMIT, ServerLimits
from gr00t_server.test_checkpoint import example_observation

TAG = "new_embodiment"  # one camera, one time step
SQUARE_FRAME_TOKENS = 64  # the tiny checkpoint's 256x256 frame: 16x16 patches, merged 2x2
WIDE_FRAME_TOKENS = 112  # its 720x1280 (16:9) frame: the vision-token budget's rows are of frames this wide


@pytest.fixture(scope="module")
def policy(tiny_checkpoint):
    return Gr00tPolicy(tiny_checkpoint, TAG, device="cpu")


@pytest.fixture(scope="module")
def letter_box_checkpoint(tiny_checkpoint, tmp_path_factory):
    target = tmp_path_factory.mktemp("letter_box") / "ckpt"
    shutil.copytree(tiny_checkpoint, target)
    path = target / "processor_config.json"
    config = json.loads(path.read_text())
    config["processor_kwargs"]["letter_box_transform"] = True
    path.write_text(json.dumps(config))
    return target


def observation(checkpoint, rows, height, width):
    return example_observation(checkpoint, TAG, batch_size=rows, image_size=(height, width))


def refusal(server, observation, options=None) -> str:
    with PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError) as caught:
            client.get_action(observation, options)
    return caught.value.server_message


# --- vision tokens per request -------------------------------------------------------------------


def test_thin_frames_over_the_request_vision_token_budget_are_refused_naming_totals_and_limit(policy, tiny_checkpoint):
    """128 rows of 1x16 frames (6 KB) cost 20 s and 4 GiB: each is 16 square frames' vision tokens. A request may
    make what --max-rows rows of 16:9 frames make (128 x 112 tokens here); 15 rows of 1x16 make 15 x 1024."""
    with running_server(policy) as server:
        message = refusal(server, observation(tiny_checkpoint, 15, 1, 16))
    assert "makes 15360 vision tokens" in message and "'front': 15 frames of 1x16, 1024 tokens each" in message
    assert "this policy accepts at most 14336 vision tokens per request" in message
    assert "what 128 rows (--max-rows, max_rows in Python) of 16:9 frames make" in message


def test_an_in_process_vision_token_refusal_names_the_max_rows_argument_as_well_as_the_flag(tiny_checkpoint):
    """A Gr00tPolicy(max_rows=1) caller was told only of --max-rows and "this server"."""
    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", max_rows=1)
    with pytest.raises(ObservationError) as caught:
        policy.get_action(observation(tiny_checkpoint, 2, 720, 1280))
    assert ("makes 224 vision tokens ('front': 2 frames of 720x1280, 112 tokens each); this policy accepts at most 112 "
            "vision tokens per request, what 1 rows (--max-rows, max_rows in Python) of 16:9 frames make") in str(caught.value)


def test_thin_frames_within_the_vision_token_budget_are_served(policy, tiny_checkpoint):
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        action, _ = client.get_action(observation(tiny_checkpoint, 2, 1, 16))
    assert action["joints"].shape[0] == 2


@pytest.mark.parametrize("edits", [{}, {"letter_box_transform": True},
                                   {"use_albumentations": False, "image_target_size": (200, 300),
                                    "image_crop_size": (190, 280)},
                                   {"use_albumentations": False, "image_target_size": 224, "image_crop_size": 200}],
                         ids=["shortest-edge", "letter-box", "torchvision-pair", "torchvision-int"])
def test_a_frames_vision_tokens_from_its_shape_are_those_the_transform_and_patches_make(tiny_checkpoint, edits):
    processor = Gr00tN1d7Processor.from_pretrained(tiny_checkpoint, local_files_only=True)
    processor.config = dataclasses.replace(processor.config, **edits)
    for height, width in [(256, 256), (1, 16), (480, 640), (101, 256), (3, 7), (640, 40)]:
        frames = np.zeros((1, height, width, 3), np.uint8)
        _, grids = patchify_batch(processor.transform_image_batch(frames), processor.vision_config)
        expected = num_image_tokens(grids[0].tolist(), processor.vision_config.merge_size)
        assert processor.frame_tokens(height, width) == expected, (height, width)


# --- denoising steps -----------------------------------------------------------------------------


def test_denoising_steps_over_the_cap_are_refused_naming_the_flag_and_the_cap_is_reported(policy, tiny_checkpoint):
    """options={"denoising_steps": 1000} ran 85x a default call (a robot's 2 s call timed out meanwhile). The cap is
    4x the checkpoint's num_inference_timesteps (4 here) by default."""
    with running_server(policy) as server:
        message = refusal(server, observation(tiny_checkpoint, 1, 32, 32), {"denoising_steps": 1000})
        with PolicyClient(port=server.port, timeout_ms=60000) as client:
            client.get_action(observation(tiny_checkpoint, 1, 32, 32), {"denoising_steps": 16})
            limits = client.get_server_info()["limits"]
    assert "options['denoising_steps'] must be an int in [1, 16]" in message and "--max-denoising-steps" in message
    assert limits["max_denoising_steps"] == 16 and limits["max_vision_tokens"] == 128 * WIDE_FRAME_TOKENS


def test_the_largest_max_rows_is_served_with_its_vision_token_budget_saturated_at_the_wire_range(tiny_checkpoint):
    """max_rows=2**63 - 1, which ServerLimits and Gr00tPolicy accept, made max_vision_tokens (rows x tokens per row)
    beyond the wire's 64 bits: every get_server_info failed, and the client took the server for a reference server."""
    huge = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", max_rows=MAX_LIMIT)
    with running_server(huge, limits=ServerLimits(max_rows=MAX_LIMIT)) as server:
        with PolicyClient(port=server.port, timeout_ms=60000) as client:
            limits = client.get_server_info()["limits"]
    assert limits["max_rows"] == MAX_LIMIT and limits["max_vision_tokens"] == MAX_LIMIT


def test_a_denoising_cap_below_the_checkpoints_own_steps_is_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"max_denoising_steps \(--max-denoising-steps\) must be an int in \[4, 1000\]"):
        Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", max_denoising_steps=3)


@pytest.fixture
def checkpoint_without_weights(tiny_checkpoint, tmp_path):
    """The tiny checkpoint's folder with its weight files taken out: loading its model fails, reading config.json not."""
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "no_weights")
    weights = list(copy.glob("*.safetensors")) + list(copy.glob("*.safetensors.index.json"))
    assert weights
    for path in weights:
        path.unlink()
    return copy


def test_a_denoising_cap_out_of_range_is_refused_before_the_weights_load(checkpoint_without_weights):
    with pytest.raises(ValueError, match=r"max_denoising_steps \(--max-denoising-steps\) must be an int in \[4, 1000\]"):
        Gr00tPolicy(checkpoint_without_weights, TAG, device="cpu", max_denoising_steps=1001)


@pytest.mark.parametrize("cap", ["-5", "0", "2"])
def test_serve_refuses_a_denoising_cap_out_of_range_before_the_model_loads(checkpoint_without_weights, cap, capsys):
    from gr00t_server import cli

    rc = cli.main(["serve", "--model-path", str(checkpoint_without_weights), "--embodiment-tag", TAG, "--device",
                   "cpu", "--no-warmup", "--port", "0", "--max-denoising-steps", cap])
    err = capsys.readouterr().err
    assert rc != 0 and "--max-denoising-steps" in err and cap in err, err
    assert "safetensors" not in err and "weight" not in err, err


def test_serve_help_states_the_denoising_cap_range(capsys):
    from gr00t_server import cli

    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "from the checkpoint's num_inference_timesteps to its num_timestep_buckets" in help_text


# --- serve flags reach the policy ----------------------------------------------------------------


def test_serve_holds_the_policy_to_its_rows_image_pixels_and_denoising_flags(letter_box_checkpoint, monkeypatch, capsys):
    from gr00t_server import cli, server

    monkeypatch.setattr(server, "PolicyServer", NoServer)
    rc = cli.main(["serve", "--model-path", str(letter_box_checkpoint), "--embodiment-tag", TAG, "--device", "cpu",
                   "--no-warmup", "--port", "0", "--max-rows", "4", "--max-image-pixels", "400000",
                   "--max-denoising-steps", "8"])
    assert rc == 0, capsys.readouterr().err
    served = NoServer.built["policy"]
    # letter-boxed, a 16:9 frame is padded to a square: the budget is 4 rows of square frames' tokens
    assert served.work_limits() == {"max_denoising_steps": 8, "max_vision_tokens": 4 * SQUARE_FRAME_TOKENS}
    with pytest.raises(ValueError, match="letter-boxes frames to a square of the long side, 8192x8192"):
        served.check_observation(observation(letter_box_checkpoint, 1, 8192, 41))


# --- letter-boxing -------------------------------------------------------------------------------


def test_a_letter_boxed_square_over_max_image_pixels_is_refused(letter_box_checkpoint):
    """An 8192x41 frame (335,872 pixels, within --max-image-pixels 400000) was padded to 8192x8192 (201 MB)."""
    boxed = Gr00tPolicy(letter_box_checkpoint, TAG, device="cpu", max_image_pixels=400000)
    with running_server(boxed) as server:
        message = refusal(server, observation(letter_box_checkpoint, 1, 8192, 41))
    assert "has 8192x41 images; this checkpoint letter-boxes frames to a square of the long side, 8192x8192" in message
    assert "over the limit of 400000 pixels per image (--max-image-pixels)" in message


def _peak_numpy_bytes(run) -> int:
    """Peak bytes numpy held (it reports its buffers to tracemalloc) while `run()` ran, above what it held before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("transform", [
    lambda frames: eval_image_transform_batch(frames, 256, 0.95, letter_box=True),
    lambda frames: eval_image_transform_torchvision_style_batch(frames, (256, 256), (230, 230), letter_box=True),
], ids=["albumentations", "torchvision-style"])
def test_letter_boxing_holds_a_few_padded_squares_however_many_frames(transform):
    """letter_box_pad_batch padded every frame of a request at once: +193 MiB a row for 8192x41 frames."""
    square = 1024 * 1024 * 3
    frames = np.random.default_rng(0).integers(0, 256, (48, 1024, 21, 3), dtype=np.uint8)
    few = _peak_numpy_bytes(lambda: transform(frames[:8]))
    many = _peak_numpy_bytes(lambda: transform(frames))
    # 40 frames more held 40 squares more (120 MiB) when all were padded at once; now only their outputs (7.5 MiB)
    # and the squares of the frames in flight on the transform's threads
    assert many < few + 12 * square, f"48 frames peaked {many / 2**20:.0f} MiB, 8 frames {few / 2**20:.0f} MiB"


def test_letter_boxing_a_frame_at_a_time_gives_the_padded_batchs_result_torchvision_style():
    frames = np.random.default_rng(1).integers(0, 256, (3, 101, 256, 3), dtype=np.uint8)
    padded = np.stack([letter_box_pad(frame) for frame in frames])
    expected = eval_image_transform_torchvision_style_batch(padded, (256, 256), (230, 230))
    np.testing.assert_array_equal(
        eval_image_transform_torchvision_style_batch(frames, (256, 256), (230, 230), letter_box=True), expected)
