"""preprocessor_config.json (the image processor's settings) is checked at load: nonsense values, and patch sizes other
than the ones the backbone's vision encoder was built for, are refused naming the file, the key and the value, instead
of failing every request with a division by zero or a tensor-size error."""

import json
import shutil

import pytest
from serving import start_serve

from gr00t_server import Gr00tPolicy
from gr00t_server.processing.vision_patches import VisionPatchConfig
from gr00t_server.test_checkpoint import example_observation

TAG = "new_embodiment"


def _with_preprocessor(tiny_checkpoint, tmp_path, **changes):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, target)
    path = target / "preprocessor_config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return target


@pytest.mark.parametrize("changes, message", [
    ({"patch_size": 0}, "'patch_size' must be an int >= 1, got 0"),
    ({"merge_size": -2}, "'merge_size' must be an int >= 1, got -2"),
    ({"temporal_patch_size": 1.5}, "'temporal_patch_size' must be an int >= 1, got 1.5"),
    ({"patch_size": "16"}, "'patch_size' must be an int >= 1, got '16'"),
    ({"image_std": [0.5, 0.0, 0.5]}, "'image_std' must not hold 0 (pixels are divided by it)"),
    ({"image_mean": [0.5]}, "'image_mean' must be 3 finite numbers (one per RGB channel), got [0.5]"),
    ({"image_mean": "0.5"}, "'image_mean' must be a list of numbers, got '0.5'"),
    ({"rescale_factor": 0}, "'rescale_factor' must be a finite number > 0, got 0.0"),
    ({"rescale_factor": "1/255"}, "'rescale_factor' must be a number, got '1/255'"),
    ({"size": {"shortest_edge": 4096, "longest_edge": 1024}}, "max_pixels (1024) is below the shortest edge"),
    ({"size": 448}, "'size' must be an object with shortest_edge and longest_edge, got 448"),
])
def test_nonsense_values_are_refused_naming_the_file_and_key(tmp_path, changes, message):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({**VisionPatchConfig().to_dict(), **changes}))
    with pytest.raises(ValueError) as caught:
        VisionPatchConfig.from_file(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_whole_floats_are_read_as_ints_as_json_writers_may_emit_them(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({**VisionPatchConfig().to_dict(), "patch_size": 16.0}))
    assert VisionPatchConfig.from_file(path).patch_size == 16


@pytest.mark.parametrize("key, value, message", [
    ("do_normalize", False, "'do_normalize' is false, but only true is supported"),
    ("do_rescale", False, "'do_rescale' is false, but only true is supported"),
    ("do_resize", False, "'do_resize' is false, but only true is supported"),
    ("resample", 2, "'resample' is 2, but only 3 (bicubic) is supported"),
])
def test_image_processor_switches_this_server_does_not_implement_are_refused(tmp_path, key, value, message):
    # transformers' fast image processor honours each of them; serving them as the default would change pixel values.
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({**VisionPatchConfig().to_dict(), key: value}))
    with pytest.raises(ValueError) as caught:
        VisionPatchConfig.from_file(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_image_processor_switches_at_their_defaults_or_null_load(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({**VisionPatchConfig().to_dict(), "resample": 3, "do_normalize": None}))
    assert VisionPatchConfig.from_file(path) == VisionPatchConfig()


@pytest.mark.parametrize("key, value, theirs", [
    ("patch_size", 8, "patch_size 16"),
    ("merge_size", 4, "spatial_merge_size 2"),
])
def test_patches_other_than_the_vision_encoders_are_refused_at_load(tiny_checkpoint, tmp_path, key, value, theirs):
    checkpoint = _with_preprocessor(tiny_checkpoint, tmp_path, **{key: value})
    with pytest.raises(ValueError) as caught:
        Gr00tPolicy(checkpoint, embodiment_tag=TAG, device="cpu")
    assert str(caught.value) == (
        f"preprocessor_config.json: {key} is {value}, but the backbone's vision encoder (config.json) has {theirs}; "
        "the image processor files do not belong to this model"
    )


def test_the_checkpoints_own_preprocessor_config_still_serves(tiny_checkpoint):
    policy = Gr00tPolicy(tiny_checkpoint, embodiment_tag=TAG, device="cpu")
    action, _info = policy.get_action(example_observation(tiny_checkpoint, TAG, batch_size=1, seed=0))
    assert all(value.shape[0] == 1 for value in action.values())


def test_serve_refuses_a_bad_preprocessor_config_in_one_line(tiny_checkpoint, tmp_path):
    checkpoint = _with_preprocessor(tiny_checkpoint, tmp_path, merge_size=0)
    proc = start_serve("serve", "--model-path", str(checkpoint), "--embodiment-tag", TAG, "--device", "cpu", "--port", "0")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, output
    errors = [line for line in output.splitlines() if "error" in line]
    assert errors == [f"gr00t-server serve: error: {checkpoint / 'preprocessor_config.json'}: 'merge_size' must be an int "
                      ">= 1, got 0"], output
    assert "Traceback" not in output
