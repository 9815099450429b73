"""Checkpoint processor files (model.md §1.4-1.6): processor_config.json, statistics.json, embodiment_id.json."""

import json
import shutil

import numpy as np
import pytest

from gr00t_client.modality import ActionRepresentation
from gr00t_server.processing.config import (
    find_processor_dir,
    load_embodiment_ids,
    load_processor_config,
    load_statistics,
    merge_embodiment_ids,
    processor_config_from_kwargs,
)

_MODALITIES = {
    "video": {"delta_indices": [0], "modality_keys": ["image"], "normalization_mode": "legacy"},
    "state": {"delta_indices": [0], "modality_keys": ["x"]},
    "action": {
        "delta_indices": [0, 1],
        "modality_keys": ["x"],
        "action_configs": [{"rep": "RELATIVE", "type": "NON_EEF", "format": "DEFAULT", "state_key": None}],
    },
    "language": {"delta_indices": [0], "modality_keys": ["task"]},
}


def test_processor_kwargs_parse_with_reference_defaults():
    config = processor_config_from_kwargs({"modality_configs": {"libero_sim": _MODALITIES}, "vlm_backend": "old"})
    assert config.embodiment_tags == ["libero_sim"]
    assert config.max_state_dim == 29 and config.clip_outliers and config.model_name == "nvidia/Cosmos-Reason2-2B"
    assert config.modality_configs["libero_sim"]["action"].action_configs[0].rep == ActionRepresentation.RELATIVE


def test_absent_recipe_keys_take_the_reference_processors_defaults_with_a_warning(caplog):
    """They took the released checkpoints' values (q01/q99, the albumentations path, no shortest edge): another
    normalization and image transform than the reference's processor gives the same files."""
    with caplog.at_level("WARNING"):
        config = processor_config_from_kwargs({"modality_configs": {"libero_sim": _MODALITIES}})
    assert (config.use_percentiles, config.use_albumentations, config.shortest_image_edge, config.crop_fraction) == (
        False, False, 256, 0.95)
    assert "processor_kwargs lacks use_percentiles, use_albumentations, shortest_image_edge, crop_fraction" in caplog.text


def test_explicit_recipe_values_are_kept_without_a_warning(caplog):
    recipe = {"use_percentiles": True, "use_albumentations": True, "shortest_image_edge": None, "crop_fraction": None,
              "max_state_dim": 132, "max_action_dim": 132, "max_action_horizon": 40}
    with caplog.at_level("WARNING"):
        config = processor_config_from_kwargs({"modality_configs": {"libero_sim": _MODALITIES}, **recipe})
    assert (config.use_percentiles, config.use_albumentations, config.shortest_image_edge, config.crop_fraction) == (
        True, True, None, None)
    assert config.resolved_crop_fraction == pytest.approx(230 / 256)  # no crop_fraction: crop size / target size
    assert "lacks" not in caplog.text


def test_int_image_sizes_are_kept_for_the_torchvision_transform():
    config = processor_config_from_kwargs({"modality_configs": {"libero_sim": _MODALITIES}, "use_albumentations": False,
                                           "image_target_size": 256, "image_crop_size": 230})
    assert (config.image_target_size, config.image_crop_size) == (256, 230)


@pytest.mark.parametrize("recipe, named", [
    ({"shortest_image_edge": None, "crop_fraction": 0.95, "image_target_size": 256}, "image_target_size is 256"),
    ({"shortest_image_edge": 256, "crop_fraction": None, "image_crop_size": 230}, "image_crop_size is 230"),
])
def test_int_image_sizes_the_albumentations_transform_reads_are_refused(recipe, named):
    # The reference's albumentations builder takes image_target_size[0] / image_crop_size[0]: an int fails there.
    with pytest.raises(ValueError, match=rf"{named}, an int; the albumentations transform .* give \[h, w\]"):
        processor_config_from_kwargs({"modality_configs": {"libero_sim": _MODALITIES}, "use_albumentations": True,
                                      **recipe})


def test_int_image_sizes_the_albumentations_transform_does_not_read_load():
    recipe = {"use_albumentations": True, "shortest_image_edge": 256, "crop_fraction": 0.95, "image_target_size": 256,
              "image_crop_size": 230}
    assert processor_config_from_kwargs({"modality_configs": {"libero_sim": _MODALITIES}, **recipe}).image_target_size == 256


def test_a_checkpoint_with_an_int_target_size_transforms_frames_like_torchvision(copy_of):
    import torch

    from gr00t_server.processing.processor import Gr00tN1d7Processor
    from gr00t_server.processing.torch_resize import resize_uint8

    checkpoint = copy_of()
    edit_processor_kwargs(checkpoint, lambda kwargs: kwargs.update(use_albumentations=False, image_target_size=256,
                                                                   image_crop_size=230))
    processor = Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    # torchvision Resize(256) -> 256x341 (aspect kept), CenterCrop(230) at (13, 56), Resize(256) -> 256x256
    resized = resize_uint8(torch.from_numpy(frame).permute(2, 0, 1)[None], (256, 341), "bilinear")
    expected = resize_uint8(resized[:, :, 13:243, 56:286], (256, 256), "bilinear")[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(processor.transform_image(frame), expected)
    with pytest.raises(ValueError, match="each would become 256x51200"):  # shortest side 256, aspect kept
        processor.transform_image(np.zeros((5, 1000, 3), np.uint8))


def edit_processor_kwargs(checkpoint, edit):
    """Apply edit(processor_kwargs) to the checkpoint's processor_config.json."""
    path = checkpoint / "processor_config.json"
    config = json.loads(path.read_text())
    edit(config["processor_kwargs"])
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("setting", ["absent", "null"])
def test_relative_action_configs_without_use_relative_action_warn_that_they_decode_as_absolute(copy_of, caplog, setting):
    checkpoint = copy_of()
    edit_processor_kwargs(checkpoint, lambda kwargs: kwargs.pop("use_relative_action") if setting == "absent"
                          else kwargs.update(use_relative_action=None))
    with caplog.at_level("WARNING"):
        config = load_processor_config(checkpoint)
    assert config.use_relative_action is False
    assert "use_relative_action" in caplog.text
    assert "new_embodiment.eef_9d, new_embodiment.joints" in caplog.text
    assert "decoded as absolute" in caplog.text


def test_an_explicit_use_relative_action_false_is_taken_without_a_warning(copy_of, caplog):
    checkpoint = copy_of()
    edit_processor_kwargs(checkpoint, lambda kwargs: kwargs.update(use_relative_action=False))
    with caplog.at_level("WARNING"):
        assert load_processor_config(checkpoint).use_relative_action is False
    assert "use_relative_action" not in caplog.text


def test_action_configs_given_as_a_string_are_refused_quoting_the_whole_value(copy_of):
    """"RELATIVE" was iterated letter by letter: the message quoted 'R' alone."""
    checkpoint = copy_of()
    edit_processor_kwargs(checkpoint, lambda kwargs: kwargs["modality_configs"]["new_embodiment"]["action"].update(
        action_configs="RELATIVE"))
    with pytest.raises(ValueError, match=r"processor_config.json: modality_configs\['new_embodiment'\]\['action'\]: "
                                         r"action_configs must be a list of action configs, .*got 'RELATIVE'"):
        load_processor_config(checkpoint)


def test_action_horizon_above_max_is_rejected():
    with pytest.raises(ValueError, match="exceeds max_action_horizon 1"):
        processor_config_from_kwargs({"modality_configs": {"t": _MODALITIES}, "max_action_horizon": 1})


def test_bad_modality_config_names_tag_and_modality():
    broken = dict(_MODALITIES, state={"delta_indices": [0], "modality_keys": []})
    with pytest.raises(ValueError, match=r"modality_configs\['t'\]\['state'\]"):
        processor_config_from_kwargs({"modality_configs": {"t": broken}})


def test_processor_subfolder_fallback(tiny_checkpoint, tmp_path):
    sub = tmp_path / "processor"
    sub.mkdir()
    for name in ("processor_config.json", "statistics.json", "embodiment_id.json"):
        shutil.copy(tiny_checkpoint / name, sub / name)
    assert find_processor_dir(tmp_path) == sub
    assert load_processor_config(tmp_path).embodiment_tags == ["libero_sim", "new_embodiment"]
    assert "libero_sim" in load_statistics(tmp_path)


def test_missing_processor_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="processor_config.json"):
        load_processor_config(tmp_path)


def test_statistics_are_float64_arrays_with_per_step_relative_stats(tiny_checkpoint):
    stats = load_statistics(tiny_checkpoint)
    assert stats["libero_sim"]["state"]["gripper"]["q01"].shape == (2,)
    relative = stats["new_embodiment"]["relative_action"]["joints"]["min"]
    assert relative.dtype == np.float64 and relative.shape == (16, 7)


def test_embodiment_ids_checkpoint_wins_and_builtins_fill_in(tmp_path):
    merged = merge_embodiment_ids({"libero_sim": 7, "my_robot": 30})
    assert merged["libero_sim"] == 7 and merged["my_robot"] == 30 and merged["new_embodiment"] == 10


def _checkpoint_with_embodiment_ids(tiny_checkpoint, tmp_path, ids):
    for name in ("processor_config.json", "statistics.json"):
        shutil.copy(tiny_checkpoint / name, tmp_path / name)
    (tmp_path / "embodiment_id.json").write_text(json.dumps(ids))
    return tmp_path


@pytest.mark.parametrize("key", ["LIBERO_PANDA", "Libero_Sim"])
def test_embodiment_id_key_spelling_a_served_tag_otherwise_is_refused_naming_it(tiny_checkpoint, tmp_path, key):
    """Such a key was never read: libero_sim silently ran on the built-in projector 2, not the 7 written."""
    checkpoint = _checkpoint_with_embodiment_ids(tiny_checkpoint, tmp_path, {key: 7})
    with pytest.raises(ValueError, match=rf"key '{key}' \(id 7\) names the served embodiment tag 'libero_sim' but is "
                                         r"never read: .* and no key 'libero_sim'; expected the key 'libero_sim'"):
        load_embodiment_ids(checkpoint, ["libero_sim", "new_embodiment"])


def test_embodiment_id_keys_of_one_served_tag_with_different_ids_are_refused(tiny_checkpoint, tmp_path):
    checkpoint = _checkpoint_with_embodiment_ids(tiny_checkpoint, tmp_path, {"libero_sim": 2, "LIBERO_PANDA": 7})
    with pytest.raises(ValueError, match=r"key 'LIBERO_PANDA' \(id 7\) names the served embodiment tag 'libero_sim'.*"
                                         r"the key 'libero_sim' holds 2"):
        load_embodiment_ids(checkpoint, ["libero_sim"])


def test_an_older_training_runs_whole_id_table_loads_its_other_tags_named_in_a_warning(tiny_checkpoint, tmp_path,
                                                                                         caplog):
    """An N1.6-era checkpoint keeps its run's whole table ({"libero_panda": 2, "unitree_g1": 21, ...}): the keys of
    tags it does not serve, spelt by older names, were refused and the checkpoint with them (the reference reads them
    as written, never looking them up)."""
    checkpoint = _checkpoint_with_embodiment_ids(
        tiny_checkpoint, tmp_path, {"libero_panda": 2, "unitree_g1": 21, "gr1": 20, "new_embodiment": 10})
    with caplog.at_level("WARNING"):
        ids = load_embodiment_ids(checkpoint, ["libero_panda"])
    assert ids["libero_panda"] == 2 and ids["unitree_g1"] == 21 and ids["new_embodiment"] == 10
    assert "'unitree_g1' (" in caplog.text and "are not read" in caplog.text and "'libero_panda' (" not in caplog.text


def test_embodiment_id_key_spelt_as_a_checkpoint_tag_or_custom_is_read_as_written(tiny_checkpoint, tmp_path):
    checkpoint = _checkpoint_with_embodiment_ids(tiny_checkpoint, tmp_path, {"Libero_Sim": 7, "my_robot": 30})
    ids = load_embodiment_ids(checkpoint, ["Libero_Sim"])
    assert ids["Libero_Sim"] == 7 and ids["my_robot"] == 30 and ids["libero_sim"] == 2


def test_embodiment_id_json_is_read_only_next_to_processor_config(tiny_checkpoint, tmp_path, caplog):
    """As the reference's processor: with its files in processor/, a root embodiment_id.json is not read, and a
    warning names it and where it would be read."""
    (tmp_path / "processor").mkdir()
    for name in ("processor_config.json", "statistics.json"):
        shutil.copy(tiny_checkpoint / name, tmp_path / "processor" / name)
    (tmp_path / "embodiment_id.json").write_text(json.dumps({"libero_sim": 5}))
    with caplog.at_level("WARNING"):
        assert load_embodiment_ids(tmp_path)["libero_sim"] == 2
    assert str(tmp_path / "embodiment_id.json") in caplog.text
    assert str(tmp_path / "processor" / "embodiment_id.json") in caplog.text


def test_embodiment_id_file_is_optional(tiny_checkpoint, tmp_path):
    for name in ("processor_config.json", "statistics.json"):
        shutil.copy(tiny_checkpoint / name, tmp_path / name)
    assert load_embodiment_ids(tmp_path)["libero_sim"] == 2
    (tmp_path / "embodiment_id.json").write_text(json.dumps({"libero_sim": 5}))
    assert load_embodiment_ids(tmp_path)["libero_sim"] == 5


@pytest.mark.parametrize("field", ["formalize_language", "clip_outliers", "use_percentiles", "use_albumentations",
                                   "exclude_state"])
def test_a_null_true_false_field_is_read_as_the_reference_reads_it_false_with_a_warning_naming_it(caplog, field):
    """The reference keeps None and tests its truth: null took ProcessorConfig's default, true for formalize_language,
    so the instruction was lower-cased and stripped of punctuation where the reference sent it as is."""
    kwargs = {"modality_configs": {"libero_sim": _MODALITIES}, "use_percentiles": True, "use_albumentations": True,
              "shortest_image_edge": 256, "crop_fraction": 0.95, field: None}
    with caplog.at_level("WARNING"):
        config = processor_config_from_kwargs(kwargs)
    assert getattr(config, field) is False
    assert f"processor_kwargs sets {field} to null" in caplog.text


def test_a_null_formalize_language_sends_the_instruction_as_written(copy_of):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    edit_processor_kwargs(checkpoint, lambda kwargs: kwargs.update(formalize_language=None))
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    assert "Pick up the bowl." in policy.processor.build_prompt("Pick up the bowl.", 1)


def test_absent_dims_and_horizon_take_the_reference_processors_defaults_with_a_warning(caplog):
    """The reference's Gr00tN1d7Processor.__init__ takes max_state_dim 29, max_action_dim 29 and max_action_horizon
    50 for them (not the released 132, 132, 40)."""
    with caplog.at_level("WARNING"):
        config = processor_config_from_kwargs({"modality_configs": {"libero_sim": _MODALITIES}})
    assert (config.max_state_dim, config.max_action_dim, config.max_action_horizon) == (29, 29, 50)
    assert "max_state_dim=29, max_action_dim=29, max_action_horizon=50" in caplog.text
    assert config.absent_keys >= {"max_state_dim", "max_action_dim", "max_action_horizon"}


def test_a_50_step_embodiment_without_max_action_horizon_loads_as_in_the_reference():
    fifty = dict(_MODALITIES, action=dict(_MODALITIES["action"], delta_indices=list(range(50))))
    config = processor_config_from_kwargs({"modality_configs": {"t": fifty}, "max_state_dim": 132,
                                           "max_action_dim": 132})
    assert config.max_action_horizon == 50 and config.absent_keys == {
        "use_percentiles", "use_albumentations", "shortest_image_edge", "crop_fraction", "max_action_horizon"}


def test_a_horizon_beyond_the_default_of_an_absent_max_action_horizon_is_refused_saying_it_is_a_default():
    longer = dict(_MODALITIES, action=dict(_MODALITIES["action"], delta_indices=list(range(51))))
    with pytest.raises(ValueError, match=r"action horizon 51 exceeds max_action_horizon 50 \(the reference "
                                         r"processor's default; processor_kwargs has no max_action_horizon"):
        processor_config_from_kwargs({"modality_configs": {"t": longer}})
    with pytest.raises(ValueError, match=r"exceeds max_action_horizon 50 of the processor config$"):
        processor_config_from_kwargs({"modality_configs": {"t": longer}, "max_action_horizon": 50})


@pytest.mark.parametrize("key", ["max_state_dim", "max_action_dim"])
def test_a_model_refusing_the_default_of_an_absent_dim_says_it_is_a_default(copy_of, key):
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    edit_processor_kwargs(checkpoint, lambda kwargs: kwargs.pop(key))
    with pytest.raises(ValueError, match=rf"processor {key} 29 \(the reference processor's default; processor_kwargs "
                                         rf"has no {key}\) != model {key} 132.*set {key}"):
        Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
