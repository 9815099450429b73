"""Eval image transform behaviour no test held (audit13b mutation testing, area clientimg): odd letter-box pads,
Python rounding of SmallestMaxSize, a crop of at least one pixel, a batch of exactly two frames, the torchvision-style
crop offset and size refusal, and the frame-size refusals at their limits (model.md §3.4)."""

import cv2
import numpy as np
import pytest

from gr00t_server.processing.image import (
    MAX_ASPECT_RATIO,
    MAX_LETTER_BOX_PIXELS,
    MAX_SCALED_ASPECT_RATIO,
    check_frame_size,
    eval_image_transform,
    eval_image_transform_batch,
    eval_image_transform_torchvision_style_batch,
    fractional_center_crop,
    letter_box_pad,
    resize_area,
)
from gr00t_server.processing.torch_resize import resize_uint8


def _reference_letter_box(image):
    """model.md §3.4: cv2.copyMakeBorder with zeros, top = pad_h // 2, left = pad_w // 2."""
    h, w = image.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return cv2.copyMakeBorder(image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0)


@pytest.mark.parametrize("shape", [(3, 6), (6, 3), (5, 8), (7, 4)])
def test_an_odd_letter_box_pad_puts_the_smaller_half_on_top_and_left_as_copy_make_border_does(shape):
    """An odd pad (3 rows for a 3x6 frame) goes 1 above, 2 below: the frame moved by a pixel otherwise."""
    frames = np.random.default_rng(0).integers(1, 256, (2,) + shape + (3,), dtype=np.uint8)
    expected = _reference_letter_box(frames[0])
    np.testing.assert_array_equal(letter_box_pad(frames[0]), expected)


def test_the_letter_boxed_transform_of_an_odd_pad_is_the_reference_pipeline():
    """[letter-box] -> SmallestMaxSize -> crop -> SmallestMaxSize, single and batched, for a 101x256 frame."""
    frames = np.random.default_rng(1).integers(0, 256, (2, 101, 256, 3), dtype=np.uint8)
    boxed = _reference_letter_box(frames[0])  # 256x256: the first resize is the identity
    h = int(256 * 0.95)
    y0 = (256 - h) // 2
    expected = cv2.resize(np.ascontiguousarray(boxed[y0 : y0 + h, y0 : y0 + h]), (256, 256), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(eval_image_transform(frames[0], 256, 0.95, letter_box=True), expected)
    np.testing.assert_array_equal(eval_image_transform_batch(frames, 256, 0.95, letter_box=True)[0], expected)


@pytest.mark.parametrize("shape,expected", [((300, 500), (256, 427)), ((150, 100), (384, 256))])
def test_smallest_max_size_rounds_the_long_side_to_nearest_not_down(shape, expected):
    """500 * 256 / 300 = 426.67 -> 427 (Python round, as albumentations); 426 by truncation."""
    image = np.random.default_rng(2).integers(0, 256, shape + (3,), dtype=np.uint8)
    assert eval_image_transform(image, 256, 1.0).shape == expected + (3,)


def test_a_tiny_crop_fraction_keeps_at_least_one_pixel():
    """model.md §3.4: ch = int(H * fraction), min 1; an empty crop reached cv2.resize."""
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    assert fractional_center_crop(image, 0.05).shape == (1, 1, 3)
    assert eval_image_transform(np.zeros((256, 256, 3), np.uint8), 256, 0.001).shape == (256, 256, 3)


def test_a_batch_of_exactly_two_frames_transforms_the_second_frame_too():
    """The second of two frames was left as uninitialised memory when only frames past the second were mapped."""
    frames = np.random.default_rng(3).integers(0, 256, (2, 120, 160, 3), dtype=np.uint8)
    batch = eval_image_transform_batch(frames, 256, 0.95)
    for frame, transformed in zip(frames, batch):
        np.testing.assert_array_equal(transformed, eval_image_transform(frame, 256, 0.95))


def test_the_torchvision_style_center_crop_rounds_its_offset_as_torchvision_does():
    """torchvision's center_crop: top = int(round((h - ch) / 2)): (256 - 229) / 2 = 13.5 -> 14, not 13."""
    frames = np.random.default_rng(4).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    ours = eval_image_transform_torchvision_style_batch(frames, (256, 256), (229, 229))
    import torch

    images = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    top = int(round((256 - 229) / 2.0))
    assert top == 14
    expected = resize_uint8(images[:, :, top : top + 229, top : top + 229].contiguous(), (256, 256), "bilinear")
    np.testing.assert_array_equal(ours, expected.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("crop", [(300, 200), (200, 300)])
def test_a_torchvision_style_crop_larger_than_the_resized_frame_is_refused(crop):
    """A crop wider (or taller) than image_target_size was silently cut to the resized frame."""
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="larger than the resized image"):
        eval_image_transform_torchvision_style_batch(frames, (256, 256), crop)


@pytest.mark.parametrize("height,width", [(0, 5), (5, 0)])
def test_a_frame_with_one_empty_side_is_refused_naming_it(height, width):
    with pytest.raises(ValueError, match=f"cam has {height}x{width} images; an image needs at least one pixel"):
        check_frame_size(height, width, where="cam")


def test_the_aspect_ratio_limits_hold_at_their_boundaries():
    """Exactly at each limit is accepted, just past it is refused."""
    check_frame_size(1, MAX_ASPECT_RATIO)
    with pytest.raises(ValueError, match="aspect ratio 201"):
        check_frame_size(MAX_ASPECT_RATIO + 1, 1)
    check_frame_size(2, 2 * MAX_SCALED_ASPECT_RATIO, shortest_edge=256)
    with pytest.raises(ValueError, match="scales a frame's shortest side to 256"):
        check_frame_size(2, 2 * MAX_SCALED_ASPECT_RATIO + 1, shortest_edge=256)


def test_a_letter_boxed_thin_frame_is_not_held_to_the_scaled_aspect_ratio_limit():
    """A letter-boxed frame becomes a square before it is scaled: a 2x100 camera is fine there."""
    check_frame_size(2, 100, letter_box=True, shortest_edge=256)


def test_a_letter_box_square_over_the_pixel_limit_is_refused():
    side = int(MAX_LETTER_BOX_PIXELS ** 0.5) + 1
    check_frame_size(100, side - 1, letter_box=True)
    with pytest.raises(ValueError, match=f"{side}x{side}, over the limit"):
        check_frame_size(100, side, letter_box=True)


def test_resize_area_refuses_a_frame_that_is_not_uint8():
    with pytest.raises(ValueError, match="uint8"):
        resize_area(np.zeros((8, 8, 3), np.float32), 4, 4)
