"""Vision patch behaviour no test held (audit13b mutation testing, area clientimg): a preprocessor_config.json whose
mean, std or rescale factor are not the defaults, non-finite means, and bools or fractions where ints belong."""

import json

import numpy as np
import pytest

from gr00t_server.processing.vision_patches import VisionPatchConfig, patchify_image

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.mark.parametrize("rescale", [1.0 / 255.0, 1.0 / 127.5])
def test_patch_values_follow_the_checkpoints_own_mean_std_and_rescale_factor(rescale):
    """Normalization as transformers' slow Qwen2-VL processor does it, for a config whose mean and std differ (only
    0.5 / 0.5 was checked, where a std read from the mean, or a rescale taken as 1/255, gives the same numbers)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    hf = Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=CLIP_MEAN,
                               image_std=CLIP_STD, rescale_factor=rescale, min_pixels=65536, max_pixels=16777216)
    config = VisionPatchConfig(image_mean=tuple(CLIP_MEAN), image_std=tuple(CLIP_STD), rescale_factor=rescale)
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    expected = hf(images=[image], return_tensors="np")
    rows, grid = patchify_image(image, config)
    assert grid.tolist() == expected["image_grid_thw"][0].tolist()
    np.testing.assert_allclose(rows, expected["pixel_values"], atol=1e-5)


@pytest.mark.parametrize("changes, message", [
    ({"image_mean": [float("nan"), 0.5, 0.5]}, "'image_mean' must be 3 finite numbers"),
    ({"image_std": [0.5, float("inf"), 0.5]}, "'image_std' must be 3 finite numbers"),
    ({"rescale_factor": float("inf")}, "'rescale_factor' must be a finite number > 0"),
    ({"patch_size": True}, "'patch_size' must be an int >= 1, got True"),
    ({"merge_size": 2.5}, "'merge_size' must be an int >= 1, got 2.5"),
    ({"image_mean": [True, 0.5, 0.5]}, "'image_mean' must be a list of numbers"),
    ({"size": {"shortest_edge": 65536}}, "'size' must hold shortest_edge and longest_edge"),
])
def test_a_preprocessor_config_json_with_values_no_image_can_use_is_refused(tmp_path, changes, message):
    """Python's json reads NaN and Infinity: a NaN mean made every pixel NaN; True read as a patch size of 1."""
    path = tmp_path / "preprocessor_config.json"
    data = {**VisionPatchConfig().to_dict(), **changes}
    path.write_text(json.dumps(data))  # json.dumps writes NaN / Infinity, json.load reads them back
    with pytest.raises(ValueError) as caught:
        VisionPatchConfig.from_file(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def test_a_list_with_two_frames_of_one_size_and_one_of_another_keeps_every_frame_in_its_place():
    """Frames are grouped by size and put back in list order: two same-size cameras must not trade places."""
    from gr00t_server.processing.vision_patches import patchify_images

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape + (3,), dtype=np.uint8) for shape in [(256, 256), (256, 352), (256, 256)]]
    rows, grids = patchify_images(images)
    alone = [patchify_image(image) for image in images]
    np.testing.assert_array_equal(rows.numpy(), np.concatenate([r for r, _ in alone]))
    assert grids.tolist() == [g.tolist() for _, g in alone]
