"""Qwen3-VL image patchify (model.md §2.3): smart resize, normalization and exact patch order."""

import numpy as np
import pytest

from gr00t_server.processing.vision_patches import (
    VisionPatchConfig,
    num_image_tokens,
    patchify_image,
    patchify_images,
    smart_resize,
)

SMALL = VisionPatchConfig(min_pixels=32 * 32)  # lets tiny test images keep their size


def test_smart_resize_keeps_256_square():
    # round(256 / 32) * 32 = 256 on both sides; area 65536 is not below min_pixels 65536 -> unchanged.
    assert smart_resize(256, 256, 32, 65536, 16777216) == (256, 256)


def test_smart_resize_rounds_to_multiple_of_32():
    assert smart_resize(256, 340, 32, 65536, 16777216) == (256, 352)  # 340 / 32 = 10.6 -> 11 * 32


def test_smart_resize_scales_up_small_images():
    # 100x120 area < 65536: beta = sqrt(65536 / 12000) = 2.337; ceil(233.7 / 32) * 32 = 256, ceil(280.4/32)*32 = 288
    assert smart_resize(100, 120, 32, 65536, 16777216) == (256, 288)


def test_256_frame_gives_64_image_tokens():
    rows, grid = patchify_image(np.zeros((256, 256, 3), np.uint8))
    # grid (1, 256/16, 256/16) = (1, 16, 16): 256 patches of 3*2*16*16 = 1536 values, 256 / 2**2 = 64 tokens.
    assert grid.tolist() == [1, 16, 16] and rows.shape == (256, 1536)
    assert num_image_tokens(grid, 2) == 64


def test_pixels_are_rescaled_to_minus_one_one():
    rows, _ = patchify_image(np.array([[[0, 255, 51]]], np.uint8).repeat(32, 0).repeat(32, 1), SMALL)
    # (v / 255 - 0.5) / 0.5: 0 -> -1, 255 -> 1, 51 -> -0.6
    np.testing.assert_allclose(rows[0, [0, 512, 1024]], [-1.0, 1.0, -0.6], atol=1e-6)


def test_patch_rows_follow_2x2_merge_windows():
    # 32x64 image = 2x4 patches of 16x16; fill patch (r, c) with value 10 * (4 r + c).
    image = np.zeros((32, 64, 3), np.uint8)
    for r in range(2):
        for c in range(4):
            image[16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = 10 * (4 * r + c)
    rows, grid = patchify_image(image, SMALL)
    assert grid.tolist() == [1, 2, 4]
    patch_ids = np.rint((rows[:, 0] * 0.5 + 0.5) * 255 / 10).astype(int)
    # Windows left to right; inside each window (0,0), (0,1), (1,0), (1,1).
    assert patch_ids.tolist() == [0, 1, 4, 5, 2, 3, 6, 7]


def test_values_inside_a_row_are_channel_time_y_x():
    image = np.zeros((32, 32, 3), np.uint8)
    yy, xx = np.mgrid[0:16, 0:16]
    image[:16, :16, 0] = yy * 16 + xx  # 0..255 inside the first patch, channel 0
    image[:16, :16, 2] = 255
    row = patchify_image(image, SMALL)[0][0]
    values = np.rint((row * 0.5 + 0.5) * 255).astype(int)
    # Layout (C=3, T=2, 16, 16): channel 0 frame 0 is the ramp, frame 1 repeats it; channel 1 is 0; channel 2 is 255.
    assert values[:256].tolist() == list(range(256)) and values[256:512].tolist() == list(range(256))
    assert values[512:1024].max() == 0 and values[1024:].min() == 255


def test_patchify_images_concatenates_in_order():
    a = np.zeros((32, 32, 3), np.uint8)
    b = np.full((32, 64, 3), 255, np.uint8)
    rows, grids = patchify_images([a, b], SMALL)
    assert grids.tolist() == [[1, 2, 2], [1, 2, 4]] and rows.shape == (12, 1536)
    assert rows[:4].max() == -1.0 and rows[4:].min() == 1.0


def test_matches_transformers_slow_qwen2vl_image_processor():
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    hf = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        min_pixels=65536, max_pixels=16777216,
    )
    rng = np.random.default_rng(0)
    for shape in [(256, 256), (256, 340), (100, 120)]:
        image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        expected = hf(images=[image], return_tensors="np")
        rows, grid = patchify_image(image)
        assert grid.tolist() == expected["image_grid_thw"][0].tolist()
        np.testing.assert_allclose(rows, expected["pixel_values"], atol=1e-6)


def test_preprocessor_config_round_trip():
    config = VisionPatchConfig.from_dict(VisionPatchConfig().to_dict())
    assert config == VisionPatchConfig()
    legacy = VisionPatchConfig.from_dict({"min_pixels": 3136, "max_pixels": 1003520, "patch_size": 14})
    assert (legacy.min_pixels, legacy.max_pixels, legacy.patch_size) == (3136, 1003520, 14)
