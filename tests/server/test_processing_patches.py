"""Qwen3-VL image patchify (model.md §2.3): smart resize, normalization and exact patch order."""

import numpy as np
import pytest
import torch

from gr00t_server.processing.vision_patches import (
    ReusedRows,
    VisionPatchConfig,
    num_image_tokens,
    patchify_batch,
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
    assert grids.tolist() == [[1, 2, 2], [1, 2, 4]] and tuple(rows.shape) == (12, 1536)
    assert rows[:4].max() == -1.0 and rows[4:].min() == 1.0


def test_matches_transformers_slow_qwen2vl_image_processor_where_no_resize_is_needed():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    hf = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        min_pixels=65536, max_pixels=16777216,
    )
    rng = np.random.default_rng(0)
    for shape in [(256, 256), (256, 352)]:
        image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        expected = hf(images=[image], return_tensors="np")
        rows, grid = patchify_image(image)
        assert grid.tolist() == expected["image_grid_thw"][0].tolist()
        np.testing.assert_allclose(rows, expected["pixel_values"], atol=1e-6)  # slow: rescale then normalize


def reference_fast_patchify(image, size):
    """The fast processor's steps for one frame on a CPU, written out: bicubic antialiased resize (torchvision's
    native uint8 kernel: it takes it for bicubic on every CPU), fused (x - 255 mean) / (255 std) in float32,
    temporal repeat, 10-d view and permute."""
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
    if size != image.shape[:2]:
        pixels = torch.nn.functional.interpolate(pixels, size=list(size), mode="bicubic", align_corners=False, antialias=True)
    mean = (torch.tensor([0.5] * 3) * (1.0 / (1.0 / 255.0))).view(-1, 1, 1)
    std = (torch.tensor([0.5] * 3) * (1.0 / (1.0 / 255.0))).view(-1, 1, 1)
    patches = pixels.to(torch.float32).sub(mean).div_(std).unsqueeze(1).repeat(1, 2, 1, 1, 1)
    gh, gw = size[0] // 16, size[1] // 16
    patches = patches.view(1, 1, 2, 3, gh // 2, 2, 16, gw // 2, 2, 16).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return patches.reshape(gh * gw, 1536)


@pytest.mark.parametrize("shape", [(256, 256), (100, 120)])
def test_patchify_batch_equals_the_fast_processor_formulas_bit_for_bit(shape):
    frames = np.random.default_rng(1).integers(0, 256, (3,) + shape + (3,), dtype=np.uint8)
    size = smart_resize(*shape)
    rows, grids = patchify_batch(frames)
    per_frame = rows.shape[0] // 3
    assert grids.tolist() == [[1, size[0] // 16, size[1] // 16]] * 3
    for index, frame in enumerate(frames):
        assert torch.equal(rows[index * per_frame : (index + 1) * per_frame], reference_fast_patchify(frame, size))


def test_patchify_batch_rows_are_each_frame_patchified_alone():
    frames = np.random.default_rng(2).integers(0, 256, (4, 100, 120, 3), dtype=np.uint8)
    rows, _ = patchify_batch(frames)
    singles = torch.cat([torch.from_numpy(patchify_image(frame)[0]) for frame in frames])
    assert torch.equal(rows, singles)


def test_reused_rows_are_the_fresh_rows_in_the_memory_of_rows_nobody_holds():
    frames = np.random.default_rng(5).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    reused = ReusedRows()
    dropped = patchify_batch(frames[:2], SMALL, reused_rows=reused)[0].data_ptr()
    rows = patchify_batch(frames[2:], SMALL, reused_rows=reused)[0]
    assert rows.data_ptr() == dropped and torch.equal(rows, patchify_batch(frames[2:], SMALL)[0])


@pytest.mark.parametrize("keep", ["rows", "a view", "a numpy array", "the storage"])
def test_reused_rows_never_overwrite_rows_a_caller_still_holds(keep):
    """Rows kept (or a view, a numpy array, the storage object of them) keep their values through later calls."""
    frames = np.random.default_rng(5).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    first, second = patchify_batch(frames[:2], SMALL)[0], patchify_batch(frames[2:], SMALL)[0]
    reused = ReusedRows()
    rows = patchify_batch(frames[:2], SMALL, reused_rows=reused)[0]
    address = rows.data_ptr()
    if keep == "rows":
        kept = rows
    elif keep == "a view":
        kept = rows[5:].view(-1)
    elif keep == "a numpy array":
        kept = rows.numpy()
    else:
        kept = rows.untyped_storage()
    del rows
    later = patchify_batch(frames[2:], SMALL, reused_rows=reused)[0]
    assert later.data_ptr() != address and torch.equal(later, second)
    if keep != "the storage":
        assert np.array_equal(np.asarray(kept), first.numpy().reshape(-1)[5 * 1536 :] if keep == "a view" else first.numpy())


class _PatchifiedInAWorker(torch.utils.data.Dataset):
    """Rows patchified into one ReusedRows in a DataLoader worker: sent to the main process through shared memory."""

    def __init__(self, frames):
        self.frames, self.reused = frames, ReusedRows()

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        return patchify_batch(self.frames[index], SMALL, reused_rows=self.reused)[0]


def test_rows_sent_to_another_process_are_never_written_again():
    """A DataLoader worker's (or a torch.multiprocessing queue's) send moves the rows' memory into shared memory in
    place, and the other process's mapping is counted nowhere here: every batch received became the last one."""
    frames = np.random.default_rng(6).integers(0, 256, (4, 2, 64, 64, 3), dtype=np.uint8)
    expected = [patchify_batch(batch, SMALL)[0] for batch in frames]
    loader = torch.utils.data.DataLoader(_PatchifiedInAWorker(frames), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork")
    received = list(loader)  # the worker has made every batch by now
    assert all(torch.equal(got, want) for got, want in zip(received, expected))


def test_mixed_sizes_keep_list_order():
    a = np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    b = np.random.default_rng(4).integers(0, 256, (256, 352, 3), dtype=np.uint8)
    rows, grids = patchify_images([a, b, a])
    assert grids.tolist() == [[1, 16, 16], [1, 16, 22], [1, 16, 16]]
    assert torch.equal(rows[:256], rows[256 + 352 :]) and torch.equal(rows[256 : 256 + 352], torch.from_numpy(patchify_image(b)[0]))


def test_smart_resize_is_transformers_own():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

    for height, width in [(256, 256), (480, 640), (100, 120), (37, 5000), (3000, 4000)]:
        assert smart_resize(height, width) == tuple(hf_smart_resize(height, width, 32, 65536, 16777216))


def test_matches_transformers_fast_processor_where_torchvision_is_installed():
    pytest.importorskip("torchvision")
    from transformers.models.qwen2_vl.image_processing_qwen2_vl_fast import Qwen2VLImageProcessorFast

    hf = Qwen2VLImageProcessorFast(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        min_pixels=65536, max_pixels=16777216,
    )
    rng = np.random.default_rng(0)
    for shape in [(256, 256), (256, 340), (100, 120)]:
        images = [rng.integers(0, 256, shape + (3,), dtype=np.uint8) for _ in range(2)]
        expected = hf(images=images, return_tensors="pt")
        rows, grids = patchify_images(np.stack(images))
        assert torch.equal(grids, expected["image_grid_thw"])
        assert torch.equal(rows, expected["pixel_values"])


def test_preprocessor_config_round_trip():
    config = VisionPatchConfig.from_dict(VisionPatchConfig().to_dict())
    assert config == VisionPatchConfig()
    legacy = VisionPatchConfig.from_dict({"min_pixels": 3136, "max_pixels": 1003520, "patch_size": 14})
    assert (legacy.min_pixels, legacy.max_pixels, legacy.patch_size) == (3136, 1003520, 14)


def test_top_level_min_and_max_pixels_override_size_as_transformers_reads_them():
    """`size` won here, where transformers' Qwen2-VL image processors let min_pixels/max_pixels override it: a file
    holding both gave another image grid than the reference's."""
    config = VisionPatchConfig.from_dict({"size": {"shortest_edge": 65536, "longest_edge": 16777216}, "max_pixels": 262144})
    assert (config.min_pixels, config.max_pixels) == (65536, 262144)
    only_min = VisionPatchConfig.from_dict({"min_pixels": 1024})
    assert (only_min.min_pixels, only_min.max_pixels) == (1024, VisionPatchConfig().max_pixels)
    with pytest.raises(ValueError, match="'size' must hold shortest_edge and longest_edge"):
        VisionPatchConfig.from_dict({"size": {"shortest_edge": 65536}})
