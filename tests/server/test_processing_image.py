"""Eval image transform (model.md §3.4): INTER_AREA resize, fractional center crop, letter-box, shapes."""

import numpy as np
import pytest

from gr00t_server.processing.image import (
    eval_image_transform,
    eval_image_transform_torchvision_style,
    fractional_center_crop,
    letter_box_pad,
    resize_area,
    smallest_max_size_shape,
)


def test_integer_shrink_is_block_mean_rounded_half_up():
    image = np.array([[[0], [1]], [[2], [3]]], dtype=np.uint8)  # mean 1.5 -> 2 (half up, like OpenCV)
    assert resize_area(image, 1, 1)[0, 0, 0] == 2
    image = np.array([[[10], [20], [30], [40]]], dtype=np.uint8)  # 1x4 -> 1x2: means 15, 35
    assert resize_area(image, 1, 2)[0, :, 0].tolist() == [15, 35]


def test_fractional_shrink_weights_partial_pixels():
    image = np.array([[[0], [90], [180]]], dtype=np.uint8)  # 3 -> 2 columns: cells [0,1.5) and [1.5,3)
    # (0*1 + 90*0.5) / 1.5 = 30 ; (90*0.5 + 180*1) / 1.5 = 150
    assert resize_area(image, 1, 2)[0, :, 0].tolist() == [30, 150]


def test_same_size_resize_is_identity():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_area(image, 5, 7), image)


@pytest.mark.parametrize(
    "src,dst", [((243, 243), (256, 256)), ((243, 323), (256, 340)), ((256, 256), (128, 128)), ((100, 77), (33, 50)), ((64, 48), (90, 30))]
)
def test_resize_area_matches_opencv_inter_area(src, dst):
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(1).integers(0, 256, src + (3,), dtype=np.uint8)
    ours = resize_area(image, *dst)
    theirs = cv2.resize(image, (dst[1], dst[0]), interpolation=cv2.INTER_AREA)
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # documented: rare float ties may differ by one level


def test_smallest_max_size_uses_python_round():
    assert smallest_max_size_shape(480, 640, 256) == (256, 341)  # 640 * 256/480 = 341.33
    assert smallest_max_size_shape(243, 323, 256) == (256, 340)  # 323 * 256/243 = 340.28


def test_fractional_center_crop_offsets():
    image = np.arange(256 * 256, dtype=np.int64).reshape(256, 256, 1)
    crop = fractional_center_crop(image, 0.95)
    # int(256 * 0.95) = 243, offset (256 - 243) // 2 = 6
    assert crop.shape[:2] == (243, 243) and crop[0, 0, 0] == 6 * 256 + 6


def test_letter_box_pads_to_square_with_zeros():
    image = np.full((2, 4, 3), 9, dtype=np.uint8)
    boxed = letter_box_pad(image)
    assert boxed.shape == (4, 4, 3) and boxed[0].sum() == 0 and boxed[1:3].min() == 9 and boxed[3].sum() == 0


@pytest.mark.parametrize("shape,expected", [((256, 256), (256, 256)), ((480, 640), (256, 340)), ((224, 224), (256, 256))])
def test_eval_transform_output_size(shape, expected):
    image = np.random.default_rng(2).integers(0, 256, shape + (3,), dtype=np.uint8)
    assert eval_image_transform(image, 256, 0.95).shape == expected + (3,)


def test_eval_transform_with_letter_box_gives_square():
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    assert eval_image_transform(image, 256, 0.95, letter_box=True).shape == (256, 256, 3)


def test_eval_transform_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match="uint8"):
        eval_image_transform(np.zeros((8, 8, 3), np.float32), 256, 0.95)


def test_without_shortest_edge_resizes_to_target_size():
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    assert eval_image_transform(image, None, 230 / 256, target_size=(256, 256)).shape == (256, 256, 3)


def test_torchvision_style_transform_output_size():
    image = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert eval_image_transform_torchvision_style(image, (256, 256), (230, 230)).shape == (256, 256, 3)
