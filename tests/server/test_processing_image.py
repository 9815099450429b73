"""Eval image transform (model.md §3.4): INTER_AREA resize, fractional center crop, letter-box, shapes."""

import os
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gr00t_server.processing.image import (
    eval_image_transform,
    eval_image_transform_batch,
    eval_image_transform_torchvision_style,
    eval_image_transform_torchvision_style_batch,
    fractional_center_crop,
    letter_box_pad,
    resize_area,
    smallest_max_size_shape,
)
from gr00t_server.processing.torch_resize import native_uint8_resize, resize_uint8
from forked_child import in_forked_child
from inter_area_reference import reference_resize_area


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
def test_resize_area_follows_the_inter_area_formulas(src, dst):
    image = np.random.default_rng(1).integers(0, 256, src + (3,), dtype=np.uint8)
    ours = resize_area(image, *dst)
    formulas = reference_resize_area(image, *dst)
    diff = np.abs(ours.astype(int) - formulas.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # documented: rare float ties may differ by one level


def test_resize_area_is_opencv_inter_area_itself():
    image = np.random.default_rng(4).integers(0, 256, (243, 323, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_area(image, 256, 340), cv2.resize(image, (340, 256), interpolation=cv2.INTER_AREA))


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


def reference_albumentations_transform(image, shortest_edge=256, fraction=0.95):
    """SmallestMaxSize(INTER_AREA) -> fractional center crop -> SmallestMaxSize, one frame, with cv2 directly."""

    def smallest_max_size(img):
        h, w = img.shape[:2]
        scale = shortest_edge / min(h, w)
        new_h, new_w = int(round(h * scale)), int(round(w * scale))
        return img if (new_h, new_w) == (h, w) else cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)

    img = smallest_max_size(image)
    h, w = img.shape[:2]
    ch, cw = int(h * fraction), int(w * fraction)
    img = img[(h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw]
    return smallest_max_size(img)


@pytest.mark.parametrize("shape", [(256, 256), (480, 640), (200, 150)])
def test_batched_transform_equals_the_reference_transform_frame_by_frame(shape):
    frames = np.random.default_rng(5).integers(0, 256, (5,) + shape + (3,), dtype=np.uint8)
    batch = eval_image_transform_batch(frames, 256, 0.95)
    for frame, transformed in zip(frames, batch):
        np.testing.assert_array_equal(transformed, reference_albumentations_transform(frame))


def test_batched_letter_box_transform_equals_single_frames():
    frames = np.random.default_rng(6).integers(0, 256, (3, 120, 160, 3), dtype=np.uint8)
    batch = eval_image_transform_batch(frames, 256, 0.95, letter_box=True)
    for frame, transformed in zip(frames, batch):
        np.testing.assert_array_equal(transformed, eval_image_transform(frame, 256, 0.95, letter_box=True))


def torchvision_resizes_uint8_natively(device, mode):
    """torchvision's `_do_native_uint8_resize_on_cpu`, written out: on a CPU, bicubic always, bilinear only when the
    capability string contains "AVX2" (so not on AVX512 or ARM)."""
    return device.type == "cpu" and (mode == "bicubic" or "AVX2" in torch.backends.cpu.get_cpu_capability())


def reference_torchvision_resize(images, size, mode):
    """torchvision v2 resize of a uint8 NCHW batch: native uint8 where it would be, else float, clamp, round."""
    if torchvision_resizes_uint8_natively(images.device, mode):
        return F.interpolate(images, size=list(size), mode=mode, align_corners=False, antialias=True)
    out = F.interpolate(images.float(), size=list(size), mode=mode, align_corners=False, antialias=True)
    return (out.clamp(0, 255) if mode == "bicubic" else out).round().to(torch.uint8)


def test_torchvision_style_batch_is_resize_center_crop_resize():
    frames = np.random.default_rng(7).integers(0, 256, (2, 480, 640, 3), dtype=np.uint8)
    ours = eval_image_transform_torchvision_style_batch(frames, (256, 256), (230, 230))
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    resized = reference_torchvision_resize(images, (256, 256), "bilinear")
    expected = reference_torchvision_resize(resized[:, :, 13:243, 13:243].contiguous(), (256, 256), "bilinear")
    np.testing.assert_array_equal(ours, expected.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(ours[1], eval_image_transform_torchvision_style(frames[1], (256, 256), (230, 230)))


@pytest.mark.parametrize("shape, resized, top_left", [((480, 640), (256, 341), (13, 56)), ((640, 480), (341, 256), (56, 13))])
def test_an_int_target_size_resizes_the_shortest_side_keeping_the_aspect_ratio(shape, resized, top_left):
    # torchvision's Resize(256): shortest side 256, long side int(256 * long / short); CenterCrop(230) is square.
    frames = np.random.default_rng(9).integers(0, 256, (2,) + shape + (3,), dtype=np.uint8)
    ours = eval_image_transform_torchvision_style_batch(frames, 256, 230)
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    top, left = top_left
    crop = reference_torchvision_resize(images, resized, "bilinear")[:, :, top : top + 230, left : left + 230]
    expected = reference_torchvision_resize(crop.contiguous(), (256, 256), "bilinear")
    np.testing.assert_array_equal(ours, expected.permute(0, 2, 3, 1).numpy())


def test_an_int_target_size_keeps_the_aspect_ratio_of_a_non_square_crop():
    frames = np.random.default_rng(10).integers(0, 256, (1, 480, 640, 3), dtype=np.uint8)
    assert eval_image_transform_torchvision_style_batch(frames, 256, (200, 230)).shape == (1, 256, 294, 3)


@pytest.mark.parametrize("capability", ["AVX512", "AVX2", "DEFAULT", "SVE256", "NO AVX"])
def test_the_native_uint8_kernel_is_used_where_torchvision_uses_it(monkeypatch, capability):
    """An AVX512 (or ARM) CPU took the native bilinear kernel where torchvision interpolates in float: 26-29% of the
    torchvision-style transform's values differed, by up to 2/255."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    for mode in ("bilinear", "bicubic"):
        for device in (torch.device("cpu"), torch.device("cuda")):
            assert native_uint8_resize(device, mode) == torchvision_resizes_uint8_natively(device, mode), (mode, device)
    assert native_uint8_resize(torch.device("cpu"), "bilinear") == (capability == "AVX2")


def test_the_float_resize_path_rounds_and_clamps_like_torchvision():
    images = torch.from_numpy(np.random.default_rng(8).integers(0, 256, (2, 3, 50, 70), dtype=np.uint8))
    out = F.interpolate(images.float(), size=[64, 64], mode="bicubic", align_corners=False, antialias=True)
    expected = out.clamp(0, 255).round().to(torch.uint8)  # the path torchvision takes on GPUs and non-AVX2 CPUs
    assert torch.equal(resize_uint8(images, (64, 64), "bicubic", native=False), expected)


@pytest.mark.parametrize("target, crop", [((256, 256), (230, 230)), (256, 230)])
def test_torchvision_style_matches_torchvision_where_installed(target, crop):
    tv = pytest.importorskip("torchvision.transforms.v2.functional")
    frames = np.random.default_rng(9).integers(0, 256, (2, 480, 640, 3), dtype=np.uint8)
    ours = eval_image_transform_torchvision_style_batch(frames, target, crop)
    for frame, transformed in zip(frames, ours):
        image = torch.from_numpy(frame).permute(2, 0, 1)
        image = tv.resize(image, target, antialias=True)
        image = tv.center_crop(image, crop)
        image = tv.resize(image, target, antialias=True)
        np.testing.assert_array_equal(transformed, image.permute(1, 2, 0).numpy())


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork (Linux)")
def test_a_forked_child_transforms_large_frames_after_the_parent_used_the_frame_pool():
    """A fork worker pool's child inherited the frame pool without its threads, and its first batch of large frames
    waited for ever on workers that did not exist."""
    frames = np.random.default_rng(0).integers(0, 256, (3, 480, 640, 3), dtype=np.uint8)  # over the pool's size
    parent = eval_image_transform_batch(frames, 256, 0.95)  # starts the frame pool's threads

    def child_matches_parent():
        return np.array_equal(eval_image_transform_batch(frames, 256, 0.95), parent)

    assert in_forked_child(child_matches_parent, timeout_s=15) == (0, "True")
