"""Damaged checkpoints and hostile frames: refused at load (or before any work) with one line naming the file,
the field and the problem, never loaded into wrong answers, tracebacks or gigabytes."""

import json
import re

import numpy as np
import pytest
import torch
from serving import NoServer

from gr00t_server.model import CheckpointError, load_model
from gr00t_server.processing import processor as processor_module
from gr00t_server.processing.image import MAX_ASPECT_RATIO, MAX_SCALED_ASPECT_RATIO


def _edit_json(path, change):
    data = json.loads(path.read_text())
    data = change(data) or data
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def tiny_processor(tmp_path_factory):
    from gr00t_server.processing import Gr00tN1d7Processor
    from gr00t_server.test_checkpoint import make_test_checkpoint

    checkpoint = make_test_checkpoint(tmp_path_factory.mktemp("faults_ckpt"), size="tiny", seed=0)
    return Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)


# --- 1. thin frames are refused before any resize -------------------------------------------------


def test_a_thin_frame_is_refused_naming_the_camera_before_any_resize(tiny_processor, monkeypatch):
    def no_resize(*args, **kwargs):
        raise AssertionError("the frame reached the resize")

    monkeypatch.setattr(processor_module, "eval_image_transform_batch", no_resize)
    monkeypatch.setattr(processor_module, "eval_image_transform_torchvision_style_batch", no_resize)
    key = tiny_processor.modality_configs("new_embodiment")["video"].modality_keys[0]
    thin = np.zeros((1, 1, 1, 4 * MAX_ASPECT_RATIO, 3), np.uint8)  # 2.4 KB
    with pytest.raises(ValueError, match=rf"Video key '{key}' has 1x{4 * MAX_ASPECT_RATIO} images.*at most {MAX_ASPECT_RATIO}"):
        tiny_processor.transform_video_batch("new_embodiment", {key: thin})


def test_a_thin_frame_the_shortest_edge_scaling_would_blow_up_is_refused_before_any_resize(tiny_processor, monkeypatch):
    """The released setting scales the shortest side to 256 keeping the aspect ratio: a 1x199 frame (under the
    processor's ratio limit of 200) became 256x50944, 51,000 vision patches: a minute of CPU and ~0.8 GB per row."""
    assert tiny_processor.config.use_albumentations and tiny_processor.config.shortest_image_edge == 256
    assert not tiny_processor.config.letter_box_transform

    def no_resize(*args, **kwargs):
        raise AssertionError("the frame reached the resize")

    monkeypatch.setattr(processor_module, "eval_image_transform_batch", no_resize)
    key = tiny_processor.modality_configs("new_embodiment")["video"].modality_keys[0]
    thin = np.zeros((2, 1, 1, 199, 3), np.uint8)
    with pytest.raises(ValueError, match=rf"Video key '{key}' has 1x199 images, aspect ratio 199.0; .* each would become "
                                         rf"256x50944 .* at most {MAX_SCALED_ASPECT_RATIO} here"):
        tiny_processor.transform_video_batch("new_embodiment", {key: thin})


def test_a_frame_at_the_scaled_aspect_ratio_limit_is_still_transformed(tiny_processor):
    key = tiny_processor.modality_configs("new_embodiment")["video"].modality_keys[0]
    frames = np.zeros((1, 1, 2, 2 * MAX_SCALED_ASPECT_RATIO, 3), np.uint8)
    (out,) = tiny_processor.transform_video_batch("new_embodiment", {key: frames})
    assert out.shape[:2] == (1, 1)


def test_a_frame_without_pixels_is_refused_naming_the_camera(tiny_processor):
    key = tiny_processor.modality_configs("new_embodiment")["video"].modality_keys[0]
    with pytest.raises(ValueError, match=rf"Video key '{key}' has 0x0 images"):
        tiny_processor.transform_video_batch("new_embodiment", {key: np.zeros((1, 1, 0, 0, 3), np.uint8)})


# --- 2, 5. processor_config.json and embodiment_id.json are read with strict types -----------------


def _load_processor(checkpoint):
    from gr00t_server.processing import Gr00tN1d7Processor

    return Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("use_relative_action", "false", "true or false"),
        ("clip_outliers", 0, "true or false"),
        ("max_state_dim", 132.9, "an int >= 1"),
        ("max_action_horizon", True, "an int >= 1"),
        ("shortest_image_edge", -5, "an int >= 1, or null"),
        ("crop_fraction", 0, r"a number in \(0, 1\]"),
        ("image_target_size", [256, "256"], r"\[h, w\] of ints"),
    ],
)
def test_a_processor_config_value_of_the_wrong_type_is_refused_naming_file_field_and_value(copy_of, field, value, expected):
    checkpoint = copy_of()
    _edit_json(checkpoint / "processor_config.json", lambda data: data["processor_kwargs"].__setitem__(field, value))
    with pytest.raises(ValueError, match=rf"processor_config.json: field '{field}' is {re.escape(json.dumps(value))} .*expected {expected}"):
        _load_processor(checkpoint)


def test_modality_configs_that_are_not_an_object_are_refused_naming_the_file(copy_of):
    checkpoint = copy_of()
    _edit_json(checkpoint / "processor_config.json", lambda data: data["processor_kwargs"].__setitem__("modality_configs", []))
    with pytest.raises(ValueError, match=r"processor_config.json: field 'modality_configs' is \[\] \(list\); expected an object"):
        _load_processor(checkpoint)


@pytest.mark.parametrize("value", [2.7, True, None, "1", -1])
def test_an_embodiment_id_that_is_not_an_int_is_refused_naming_file_tag_and_value(copy_of, value):
    checkpoint = copy_of()
    _edit_json(checkpoint / "embodiment_id.json", lambda data: data.__setitem__("new_embodiment", value))
    with pytest.raises(ValueError, match=rf"embodiment_id.json: embodiment 'new_embodiment' has id {json.dumps(value)} .*expected an int >= 0"):
        _load_processor(checkpoint)


# --- 3, 4. statistics.json: finite, equal lengths, ordered ranges ------------------------------------


def _set_stat(checkpoint, group, key, stat, value, tag="new_embodiment"):
    path = checkpoint / "statistics.json"
    text = path.read_text()
    data = json.loads(text)
    data[tag][group][key][stat] = "__VALUE__"
    path.write_text(json.dumps(data).replace('"__VALUE__"', value))  # NaN/Infinity as Python's json writes them


def _serve_tag(checkpoint, tag="new_embodiment"):
    """Load the processor and its normalization of `tag`, as Gr00tPolicy does at load."""
    return _load_processor(checkpoint).norm_params(tag)


def _first_key(checkpoint, group, tag="new_embodiment"):
    return sorted(json.loads((checkpoint / "statistics.json").read_text())[tag][group])[0]


@pytest.mark.parametrize(
    "group, stat, value, message",
    [
        ("state", "q01", "[NaN]", r"\['q01'\] has a non-finite value \(nan\)"),
        ("action", "q99", "[Infinity]", r"\['q99'\] has a non-finite value \(inf\)"),
        ("action", "q99", '["a"]', r"\['q99'\] is not a list of numbers"),
        ("action", "q01", "[1e9]", r": q01 1000000000.0 > q99 .* at index \[0\]; the range is inverted"),
        # finite in float64, inf once the action is unnormalized into float32: warm-up or every call failed late
        ("action", "q99", "[1e39]", r"\['q99'\] value 1e\+39 at index \[0\] is beyond float32's range"),
        ("state", "q01", "[-1e300]", r"\['q01'\] value -1e\+300 at index \[0\] is beyond float32's range"),
    ],
)
def test_bad_statistics_values_are_refused_at_load_naming_file_key_and_stat(copy_of, group, stat, value, message):
    checkpoint = copy_of()
    key = _first_key(checkpoint, group)
    width = len(json.loads((checkpoint / "statistics.json").read_text())["new_embodiment"][group][key][stat])
    _set_stat(checkpoint, group, key, stat, "[" + ", ".join([value.strip("[]")] * width) + "]")
    with pytest.raises(ValueError, match=rf"statistics.json: statistics\['new_embodiment'\]\['{group}'\]\['{key}'\]{message}"):
        _serve_tag(checkpoint)


@pytest.mark.parametrize("group, key", [("state", "joints"), ("action", "gripper")])
def test_a_z_scored_key_without_mean_and_std_is_refused_at_load(copy_of, group, key):
    """0 and 1 stood in for the missing mean and std: the model got raw states, and actions decoded unscaled."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()

    def z_score_key(config):
        configs = config["processor_kwargs"]["modality_configs"]["new_embodiment"][group]
        configs["mean_std_embedding_keys"] = sorted({*(configs.get("mean_std_embedding_keys") or []), key})

    def drop_mean_std(stats):
        for name in ("mean", "std"):
            stats["new_embodiment"][group][key].pop(name, None)

    _edit_json(checkpoint / "processor_config.json", z_score_key)
    _edit_json(checkpoint / "statistics.json", drop_mean_std)
    with pytest.raises(KeyError, match=rf"statistics for {group} key '{key}' of 'new_embodiment' lack \['mean', 'std'\]"):
        Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")


def test_invalid_statistics_of_another_embodiment_do_not_block_the_served_one(copy_of, caplog):
    """One NaN in an embodiment the server does not serve refused the whole checkpoint, where the reference reads
    only the served tag's statistics (a base checkpoint of many embodiments became unusable)."""
    checkpoint = copy_of()
    key = _first_key(checkpoint, "state")
    width = len(json.loads((checkpoint / "statistics.json").read_text())["new_embodiment"]["state"][key]["q01"])
    _set_stat(checkpoint, "state", key, "q01", "[" + ", ".join(["NaN"] * width) + "]")
    with caplog.at_level("WARNING"):
        processor = _load_processor(checkpoint)
    assert processor.norm_params("libero_sim").state  # the other embodiment serves
    assert "embodiments ['new_embodiment'] cannot be served: their statistics are invalid" in caplog.text
    with pytest.raises(ValueError, match=rf"statistics\['new_embodiment'\]\['state'\]\['{key}'\]\['q01'\] has a non-finite"):
        processor.norm_params("new_embodiment")


def test_statistics_of_one_key_with_different_lengths_are_refused(copy_of):
    checkpoint = copy_of()
    key = _first_key(checkpoint, "action")
    _set_stat(checkpoint, "action", key, "min", "[0.0]")
    _set_stat(checkpoint, "action", key, "max", "[1.0]")
    with pytest.raises(ValueError, match=rf"statistics.json: .*\['action'\]\['{key}'\]: stats have different lengths \(.*min 1"):
        _serve_tag(checkpoint)


@pytest.mark.parametrize("tag, group", [("libero_sim", "action"), ("new_embodiment", "state")])
def test_per_step_rows_for_a_state_or_action_key_are_refused_at_load_naming_file_tag_key_and_shape(
        copy_of, serve_error, tag, group):
    """[[..], [..]] rows (the layout relative_action keys use) for a state or action key loaded, then every
    get_action failed with numpy's broadcasting error, naming neither the file nor the key."""
    checkpoint = copy_of()
    key = _first_key(checkpoint, group, tag)

    def as_rows(stats):
        entry = stats[tag][group][key]
        entry.update({name: [row, row] for name, row in entry.items()})

    _edit_json(checkpoint / "statistics.json", as_rows)
    width = len(json.loads((checkpoint / "statistics.json").read_text())[tag][group][key]["max"][0])
    err = serve_error(checkpoint, tag=tag)
    expected = (rf"statistics.json: statistics\['{tag}'\]\['{group}'\]\['{key}'\]\['\w+'\] has shape \(2, {width}\); "
                rf"a state or action key's statistics must be 1-D, one value per dimension \(shape \({width},\)\)")
    assert re.search(expected, err), err


def test_relative_action_statistics_with_an_extra_level_are_refused_at_load_naming_file_tag_and_key(copy_of, serve_error):
    """Two stacked [T][D] sets ([2][T][D]) loaded: a batch-2 get_action decoded row 1 with the second set, silently."""
    checkpoint = copy_of()
    key = _first_key(checkpoint, "relative_action")

    def stack_two_sets(stats):
        entry = stats["new_embodiment"]["relative_action"][key]
        entry.update({name: [rows, rows] for name, rows in entry.items()})

    _edit_json(checkpoint / "statistics.json", stack_two_sets)
    rows = json.loads((checkpoint / "statistics.json").read_text())["new_embodiment"]["relative_action"][key]["max"][0]
    steps, width = len(rows), len(rows[0])
    err = serve_error(checkpoint)
    expected = (rf"statistics.json: statistics\['new_embodiment'\]\['relative_action'\]\['{key}'\]\['\w+'\] has shape "
                rf"\(2, {steps}, {width}\); a relative_action key's statistics must be one row per action-horizon step, "
                rf"shape \(T, {width}\), or one row, shape \({width},\)")
    assert re.search(expected, err), err


def test_relative_action_statistics_of_one_key_with_different_shapes_are_refused(copy_of):
    checkpoint = copy_of()
    key = _first_key(checkpoint, "relative_action")
    _edit_json(checkpoint / "statistics.json",
               lambda stats: stats["new_embodiment"]["relative_action"][key].update(
                   max=stats["new_embodiment"]["relative_action"][key]["max"][0]))
    with pytest.raises(ValueError, match=rf"statistics.json: .*\['relative_action'\]\['{key}'\]: \w+ has shape "
                                         r"\(\d+, \d+\) but max has \(\d+,\); every stat of a relative_action key"):
        _serve_tag(checkpoint)


def test_a_huge_range_that_overflows_is_refused(copy_of):
    checkpoint = copy_of()
    key = _first_key(checkpoint, "action")
    width = len(json.loads((checkpoint / "statistics.json").read_text())["new_embodiment"]["action"][key]["q01"])
    _set_stat(checkpoint, "action", key, "q01", json.dumps([-1.7e308] * width))
    _set_stat(checkpoint, "action", key, "q99", json.dumps([1.7e308] * width))
    with pytest.raises(ValueError, match=r"\['q01'\] value -1\.7e\+308 at index \[0\] is beyond float32's range"):
        _serve_tag(checkpoint)


# --- relative action configs that cannot decode are refused at load ------------------------------------------


@pytest.mark.parametrize(
    "index, edit, message",
    [  # new_embodiment's actions: eef_9d (relative EEF xyz+rot6d), gripper, joints (relative, 7 values)
        (2, {"state_key": "joint_pos"}, r"relative action key 'joints' of 'new_embodiment' is decoded against state "
                                        r"key 'joint_pos' \(its action_configs state_key\), which is not one of the "
                                        r"state keys \['eef_9d', 'gripper', 'joints'\]"),
        (2, {"state_key": "gripper"}, r"relative action key 'joints' of 'new_embodiment' has 7 values but its reference "
                                      r"state 'gripper' has 1"),
        (0, {"format": "XYZ_ROTVEC"}, r"relative action key 'eef_9d' of 'new_embodiment' has 9 values but its "
                                      r"action_configs format XYZ_ROTVEC is an end-effector pose of 6"),
        (2, {"type": "EEF", "format": "XYZ_ROT6D"}, r"relative action key 'joints' of 'new_embodiment' has 7 values but "
                                                    r"its action_configs format XYZ_ROT6D is an end-effector pose of 9"),
    ],
    ids=["state-key-not-a-state", "state-of-another-width", "rotvec-on-9-values", "rot6d-on-7-values"],
)
def test_a_relative_action_config_that_cannot_decode_is_refused_at_load(copy_of, index, edit, message):
    """Each loaded, then every get_action failed (some only after the model ran) with a message blaming the client."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    _edit_json(checkpoint / "processor_config.json", lambda config: config["processor_kwargs"]["modality_configs"]
               ["new_embodiment"]["action"]["action_configs"][index].update(edit))
    with pytest.raises(ValueError, match="processor_config.json: " + message):
        Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")


# --- image settings no frame can be transformed with are refused at load ---------------------------------------


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"shortest_image_edge": None, "image_target_size": None},
         "shortest_image_edge and image_target_size are both null"),
        ({"crop_fraction": None, "image_crop_size": None}, "crop_fraction and image_crop_size are null"),
        ({"use_albumentations": False, "image_target_size": None},
         "use_albumentations is false, whose transform resizes to image_target_size and center crops image_crop_size, "
         "but image_target_size is null"),
        ({"use_albumentations": False, "image_crop_size": [300, 300], "image_target_size": [256, 256]},
         r"image_crop_size \[300, 300\] is larger than image_target_size \[256, 256\]"),
    ],
    ids=["no-resize-size", "no-crop", "torchvision-without-target-size", "torchvision-crop-above-resize"],
)
def test_image_settings_no_frame_can_be_transformed_with_are_refused_at_load(copy_of, edit, message):
    """Each loaded, then every get_action failed with a ValueError a server reported as the client's bad request."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    _edit_json(checkpoint / "processor_config.json", lambda config: config["processor_kwargs"].update(edit))
    with pytest.raises(ValueError, match=r"processor_config.json: " + message):
        Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")


# --- 8. warm-up refuses a model whose sample action is not finite ---------------------------------------


def test_warm_up_refuses_to_declare_ready_when_the_sample_action_is_nan(tiny_checkpoint):
    import argparse

    import torch

    from gr00t_server.backends.common import model_of
    from gr00t_server.cli import CliError, _warm_up
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    with torch.no_grad():
        dict(model_of(policy).named_parameters())["action_head.action_decoder.layer2.b"].fill_(float("nan"))
    args = argparse.Namespace(max_batch_size=1, inference_mode="pytorch")
    with pytest.raises(CliError, match=r"warm-up failed: .*output for action key '\w+' .* holds non-finite values \(NaN or inf\)") as info:
        _warm_up(policy, args)
    assert "\n" not in str(info.value)


def _drop_min_max(stats):
    for groups in stats.values():
        for group in ("state", "action"):
            for key_stats in groups[group].values():
                key_stats.pop("min")
                key_stats.pop("max")


def test_warm_up_answers_for_statistics_with_only_the_percentiles_and_mean_std_normalization_reads(copy_of):
    """q01/q99/mean/std is all use_percentiles=true reads: Gr00tPolicy served it, but serve's warm-up (and export)
    refused it with KeyError 'min'."""
    import argparse

    from gr00t_server.cli import _warm_up
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    _edit_json(checkpoint / "statistics.json", _drop_min_max)
    _warm_up(Gr00tPolicy(checkpoint, "new_embodiment", device="cpu"), argparse.Namespace(max_batch_size=1,
                                                                                       inference_mode="pytorch"))


def test_example_states_are_drawn_from_the_range_normalization_uses(copy_of):
    from gr00t_server.test_checkpoint import example_observation

    checkpoint = copy_of()
    _edit_json(checkpoint / "statistics.json", _drop_min_max)
    stats = json.loads((checkpoint / "statistics.json").read_text())["new_embodiment"]["state"]
    states = example_observation(checkpoint, "new_embodiment", batch_size=4)["state"]
    for key, values in states.items():
        assert (values >= np.float32(stats[key]["q01"])).all() and (values <= np.float32(stats[key]["q99"])).all(), key


# --- 6. serve accepts the tags the checkpoint declares -----------------------------------------------------


@pytest.fixture(scope="module")
def custom_tag_checkpoint(tmp_path_factory):
    from gr00t_server.test_checkpoint import make_test_checkpoint

    return make_test_checkpoint(tmp_path_factory.mktemp("custom_tag"), size="tiny", embodiment_tags=["my_robot"],
                                embodiment="metaworld")


def test_serve_accepts_a_tag_that_only_the_checkpoint_declares(custom_tag_checkpoint, monkeypatch, capsys):
    from gr00t_server import cli, server

    monkeypatch.setattr(server, "PolicyServer", NoServer)
    rc = cli.main(["serve", "--model-path", str(custom_tag_checkpoint), "--embodiment-tag", "my_robot", "--device", "cpu",
                   "--no-warmup", "--port", "0"])
    assert rc == 0, capsys.readouterr().err
    assert NoServer.built["embodiment_tag"] == "my_robot"
    assert NoServer.built["policy"].embodiment_tag_value == "my_robot"


def test_serve_refuses_a_tag_neither_built_in_nor_in_the_checkpoint_in_one_line(custom_tag_checkpoint, serve_error):
    err = serve_error(custom_tag_checkpoint, tag="their_robot")
    assert "Unknown embodiment tag: 'their_robot'" in err and "['my_robot']" in err


def test_serve_names_the_checkpoint_tags_when_a_built_in_tag_is_missing_from_it(custom_tag_checkpoint, serve_error):
    err = serve_error(custom_tag_checkpoint, tag="libero_sim")
    assert "is not supported by this checkpoint" in err and "my_robot" in err


def test_serve_without_a_tag_says_the_default_was_used_and_gives_each_tag_flag(custom_tag_checkpoint, capsys):
    """The reference's hint pointed at launch_finetune.py, a script this product lacks, and never said the tag was the
    default; the checkpoint's own tag was listed with no flag to copy."""
    from gr00t_server import cli

    rc = cli.main(["serve", "--model-path", str(custom_tag_checkpoint), "--device", "cpu", "--no-warmup", "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--embodiment-tag was not given, so the default 'new_embodiment' was used" in err
    assert "(--embodiment-tag my_robot)" in err
    assert "launch_finetune" not in err and "README" not in err


def test_serve_with_a_tag_does_not_call_it_the_default(custom_tag_checkpoint, serve_error):
    err = serve_error(custom_tag_checkpoint, tag="libero_sim")
    assert "default" not in err and "README" not in err and "(--embodiment-tag my_robot)" in err


# --- 7. damaged files stop start-up with one line naming the file -------------------------------------------


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        lambda path: path.write_bytes(b""),
        lambda path: path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json,,,,}"),
    ],
    ids=["truncated", "empty", "corrupt-header"],
)
def test_a_damaged_model_safetensors_is_one_line_naming_the_file(copy_of, damage, serve_error):
    checkpoint = copy_of()
    damage(checkpoint / "model.safetensors")
    err = serve_error(checkpoint)
    assert "model.safetensors is not a valid safetensors file" in err


def test_export_reports_a_damaged_model_safetensors_in_one_line(copy_of, capsys):
    from gr00t_server import cli

    checkpoint = copy_of()
    _truncate(checkpoint / "model.safetensors")
    rc = cli.main(["export", "--model-path", str(checkpoint), "--embodiment-tag", "new_embodiment",
                   "--output", str(checkpoint.parent / "exported"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "model.safetensors is not a valid safetensors file" in err


@pytest.mark.parametrize(
    "text, message",
    [("[1, 2]", "config must be a JSON object, got list"), ("null", "config must be a JSON object, got NoneType")],
)
def test_config_json_that_is_not_an_object_is_one_line_naming_the_file(copy_of, text, message, serve_error):
    checkpoint = copy_of()
    (checkpoint / "config.json").write_text(text)
    assert f"config.json: {message}" in serve_error(checkpoint)


def test_a_backbone_size_of_the_wrong_type_is_one_line_naming_the_field(copy_of, serve_error):
    checkpoint = copy_of()
    _edit_json(checkpoint / "config.json",
               lambda data: data["backbone_cfg"]["text_config"].__setitem__("hidden_size", "64"))
    err = serve_error(checkpoint)
    assert "config.json: config field 'backbone_cfg.text_config.hidden_size' must be an int >= 1, got '64'" in err


@pytest.mark.parametrize(
    "indexes, message",
    [
        ([5], "holds 5; expected ViT block indexes in [0, 1] (vision_config.depth is 2)"),
        ([-1], "holds -1; expected ViT block indexes in [0, 1] (vision_config.depth is 2)"),
        ([0, 0], "is [0, 0]; expected each ViT block index once"),
        (["0"], 'holds "0"; expected ViT block indexes in [0, 1]'),
    ],
    ids=["past-depth", "negative", "twice", "string"],
)
def test_a_deepstack_index_naming_no_vit_block_is_refused_at_load(copy_of, serve_error, indexes, message):
    # The weights still match in shape: such a config served actions with the deepstack features silently dropped.
    checkpoint = copy_of()
    _edit_json(checkpoint / "config.json",
               lambda data: data["backbone_cfg"]["vision_config"].__setitem__("deepstack_visual_indexes", indexes))
    err = serve_error(checkpoint)
    assert f"config.json: config field 'backbone_cfg.vision_config.deepstack_visual_indexes' {message}" in err


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("text_config", "rope_theta", "5e6", "must be a finite number > 0, got '5e6'"),
        ("text_config", "rms_norm_eps", "1e-6", "must be a finite number > 0, got '1e-6'"),
        ("text_config", "rms_norm_eps", 0, "must be a finite number > 0, got 0"),
        ("text_config", "rope_theta", -1.0, "must be a finite number > 0, got -1.0"),
        ("vision_config", "num_position_embeddings", "256", "must be an int >= 1, got '256'"),
        ("text_config", "max_position_embeddings", 4096.5, "must be an int >= 1, got 4096.5"),
        ("text_config", "hidden_act", "silu2", "is \"silu2\" (did you mean 'silu'?); expected an activation of "
                                               "transformers' ACT2FN: ["),
        ("vision_config", "hidden_act", "gelu_tanh", "is \"gelu_tanh\" (did you mean 'gelu_python_tanh'?); expected an "
                                                     "activation of transformers' ACT2FN: ["),
        ("vision_config", "hidden_act", None, "is null; expected an activation of transformers' ACT2FN: ["),
    ],
    ids=["rope-theta-string", "rms-eps-string", "rms-eps-zero", "rope-theta-negative", "position-embeddings-string",
         "max-positions-float", "text-act-typo", "vision-act-typo", "act-null"],
)
def test_a_backbone_value_of_the_wrong_kind_is_one_line_naming_file_field_and_value(copy_of, serve_error, section,
                                                                                   key, value, message):
    checkpoint = copy_of()
    _edit_json(checkpoint / "config.json", lambda data: data["backbone_cfg"][section].__setitem__(key, value))
    err = serve_error(checkpoint)
    assert f"config.json: config field 'backbone_cfg.{section}.{key}' {message}" in err


def _set_text(key, value):
    return lambda data: data["backbone_cfg"]["text_config"].__setitem__(key, value)


@pytest.mark.parametrize(
    "edit, field, message",
    [
        (_set_text("rope_scaling", "abc"), "text_config.rope_scaling", 'is "abc"; expected an object such as'),
        (_set_text("rope_scaling", [4, 2, 2]), "text_config.rope_scaling", "is [4, 2, 2]; expected an object"),
        (_set_text("rope_scaling", None), "text_config.rope_scaling", "is null; expected an object such as"),
        (lambda data: data["backbone_cfg"]["text_config"].pop("rope_scaling") and None, "text_config.rope_scaling",
         "is absent; expected an object such as"),
        (lambda data: data["backbone_cfg"]["text_config"]["rope_scaling"].__setitem__("mrope_section", [4, 4, 4]),
         "text_config.rope_scaling.mrope_section", "is [4, 4, 4]; expected three ints >= 0 that sum to head_dim/2 = 8 "
                                                   "(text_config.head_dim is 16)"),
        (lambda data: data["backbone_cfg"]["text_config"]["rope_scaling"].__setitem__("mrope_section", "4,2,2"),
         "text_config.rope_scaling.mrope_section", 'is "4,2,2"; expected three ints'),
        (_set_text("num_key_value_heads", 3), "text_config.num_attention_heads",
         "is 4; expected a multiple of num_key_value_heads (3)"),
        (lambda data: data["backbone_cfg"]["vision_config"].__setitem__("num_heads", 3), "vision_config.num_heads",
         "is 3; expected a divisor of vision_config.hidden_size (32)"),
    ],
    ids=["rope-scaling-string", "rope-scaling-list", "rope-scaling-null", "rope-scaling-absent", "mrope-sum",
         "mrope-string", "kv-heads", "vision-heads"],
)
def test_backbone_head_and_rope_settings_torch_cannot_run_are_refused_at_load(copy_of, serve_error, edit, field,
                                                                              message):
    # A string, null or absent rope_scaling failed inside transformers with a traceback; vision heads that do not
    # divide hidden_size loaded (the weights still match) and failed every request in torch's reshape.
    checkpoint = copy_of()
    _edit_json(checkpoint / "config.json", edit)
    err = serve_error(checkpoint)
    assert f"config.json: config field 'backbone_cfg.{field}' {message}" in err


def test_an_unsupported_activation_fn_is_one_line_naming_file_and_field(copy_of, serve_error):
    checkpoint = copy_of()
    _edit_json(checkpoint / "config.json", lambda config: config["diffusion_model_cfg"].update(activation_fn="gelu_tanh"))
    err = serve_error(checkpoint)
    assert "config.json: config field 'diffusion_model_cfg.activation_fn' is \"gelu_tanh\"; expected one of" in err


def test_a_select_layer_absent_from_config_json_is_named_as_defaulted(copy_of, serve_error):
    checkpoint = copy_of()
    _edit_json(checkpoint / "config.json", lambda config: config.pop("select_layer") and None)
    err = serve_error(checkpoint)
    assert "config.json: config field 'select_layer' is 12; expected an int in [1, " in err
    assert "the config has no select_layer, so the code default 12 applies" in err


def test_an_absurd_number_of_denoising_steps_is_refused(copy_of, serve_error):
    checkpoint = copy_of()
    _edit_json(checkpoint / "config.json", lambda data: data.__setitem__("num_inference_timesteps", 10**9))
    assert "'num_inference_timesteps' is 1000000000; expected at most" in serve_error(checkpoint)


def test_a_null_embodiment_id_is_one_line(copy_of, serve_error):
    checkpoint = copy_of()
    _edit_json(checkpoint / "embodiment_id.json", lambda data: data.__setitem__("new_embodiment", None))
    assert "embodiment_id.json: embodiment 'new_embodiment' has id null" in serve_error(checkpoint)


def _write_index(checkpoint, index):
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00001.safetensors")
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "index, message",
    [
        (["model-00001-of-00001.safetensors"], "has no 'weight_map' object"),
        ({"weight_map": {"a.weight": 3}}, "weight_map['a.weight'] is 3; expected a shard file name"),
        ({"weight_map": {"a.weight": "../model-00001-of-00001.safetensors"}}, "shards must be files in the checkpoint folder"),
    ],
    ids=["list", "int-value", "outside"],
)
def test_a_malformed_shard_index_is_one_line_naming_the_file(copy_of, index, message, serve_error):
    checkpoint = copy_of()
    _write_index(checkpoint, index)
    err = serve_error(checkpoint)
    assert "model.safetensors.index.json" in err and message in err


@pytest.mark.parametrize("damage", [lambda text: "{1: 2}", lambda text: text[: len(text) // 2]], ids=["invalid", "truncated"])
def test_a_broken_tokenizer_json_is_one_line_naming_it(copy_of, damage, serve_error):
    checkpoint = copy_of()
    path = checkpoint / "tokenizer.json"
    path.write_text(damage(path.read_text()))
    err = serve_error(checkpoint)
    assert f"error: {path} could not be read" in err


@pytest.mark.parametrize(
    "name, content",
    [
        ("preprocessor_config.json", b"{bad"),
        ("preprocessor_config.json", b'{"image_processor_type": "\xe9"}'),
        ("chat_template.json", b"{bad"),
        ("tokenizer_config.json", b"{bad"),
        ("chat_template.jinja", b"\xe9\xe9 {{ messages }}"),
    ],
    ids=["preprocessor-json", "preprocessor-latin1", "chat-template-json", "tokenizer-config-json", "jinja-latin1"],
)
def test_an_unreadable_tokenizer_side_file_is_one_line_naming_it(copy_of, serve_error, name, content):
    # The JSON error named no file, and transformers' reading of chat_template.jinja was blamed on tokenizer.json.
    checkpoint = copy_of()
    (checkpoint / name).write_bytes(content)
    err = serve_error(checkpoint)
    assert f"error: {checkpoint / name} is not" in err


_GIT_LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
                    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 6777464\n")


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "tokenizer_config.json"])
def test_a_git_lfs_pointer_in_place_of_a_file_is_named_with_git_lfs_pull(copy_of, serve_error, name):
    # A `git clone` without git-lfs: the weights were called damaged (a re-clone gives the same pointers).
    checkpoint = copy_of()
    (checkpoint / name).write_text(_GIT_LFS_POINTER)
    err = serve_error(checkpoint)
    assert f"error: {checkpoint / name} is a git-lfs pointer" in err and "`git lfs pull`" in err


@pytest.mark.parametrize(
    "template, message",
    [
        ("{% for m in messages %}{{ m['role'] ", "the chat template does not render (TemplateSyntaxError: unexpected end"),
        ("{{ raise_exception('no images here') }}", "the chat template does not render (TemplateError: no images here)"),
        ("", "as ''; expected one <|image_pad|> per image and the instruction text"),
        ("{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_end|>{% endfor %}",
         "expected one <|image_pad|> per image and the instruction text"),
    ],
    ids=["unterminated-tag", "raises", "empty", "drops-the-content"],
)
def test_a_chat_template_that_renders_no_usable_prompt_is_refused_at_load_naming_it(copy_of, serve_error, template,
                                                                                    message):
    # It loaded, and then every request failed (with --no-warmup the server bound and answered only errors).
    checkpoint = copy_of()
    (checkpoint / "chat_template.jinja").write_text(template)
    err = serve_error(checkpoint)
    assert f"error: {checkpoint / 'chat_template.jinja'}: the chat template" in err and message in err


def test_export_reports_a_chat_template_that_fails_on_its_prompt_in_one_line(copy_of, capsys):
    # verify read the traceback's exit 1 as out-of-tolerance numbers; a template error is a checkpoint mistake.
    from gr00t_server import cli

    checkpoint = copy_of()
    path = checkpoint / "chat_template.jinja"
    one_image_only = ("{% if messages[0]['content']|length > 2 %}{{ raise_exception('one camera only') }}{% endif %}")
    path.write_text(one_image_only + path.read_text())
    rc = cli.main(["export", "--model-path", str(checkpoint), "--embodiment-tag", "libero_sim",
                   "--output", str(checkpoint.parent / "exported"), "--mode", "dit_only", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "gr00t-server export: error: one camera only" in err


def test_a_tokenizer_json_without_tokenizer_config_json_is_named_as_missing(copy_of, serve_error):
    # transformers blamed config.json's model type and an out-of-date Transformers instead.
    checkpoint = copy_of()
    (checkpoint / "tokenizer_config.json").unlink()
    err = serve_error(checkpoint)
    assert f"tokenizer_config.json is missing from the tokenizer folder {checkpoint};" in err
    assert "does not recognize this architecture" not in err


# --- 11. the shard index is honoured ------------------------------------------------------------------------


def test_a_stale_copy_of_a_tensor_in_another_shard_is_refused_naming_both(copy_of):
    from safetensors.torch import load_file, save_file

    checkpoint = copy_of()
    tensors = load_file(checkpoint / "model.safetensors")
    key = "action_head.action_decoder.layer1.W"
    save_file({key: tensors[key] * 0 + 1000.0}, checkpoint / "model-00002-of-00002.safetensors")
    weight_map = {name: "model-00001-of-00001.safetensors" for name in tensors}
    weight_map["unused.marker"] = "model-00002-of-00002.safetensors"  # lists shard 2, not for `key`
    _write_index(checkpoint, {"weight_map": weight_map})
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' is in both model-00001-of-00001.safetensors and "
                                              r"model-00002-of-00002.safetensors"):
        load_model(checkpoint, device="cpu")


def test_a_tensor_in_another_shard_than_the_index_names_is_refused(copy_of):
    from safetensors.torch import load_file, save_file

    checkpoint = copy_of()
    tensors = load_file(checkpoint / "model.safetensors")
    key = "action_head.action_decoder.layer1.W"
    save_file({key: tensors.pop(key)}, checkpoint / "model-00002-of-00002.safetensors")
    save_file(tensors, checkpoint / "model.safetensors")
    weight_map = {name: "model-00002-of-00002.safetensors" for name in tensors}  # all but `key` misplaced
    weight_map[key] = "model-00001-of-00001.safetensors"
    _write_index(checkpoint, {"weight_map": weight_map})
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json places in"):
        load_model(checkpoint, device="cpu")


def test_a_single_weights_file_beside_a_shard_index_is_loaded_as_transformers_does_with_a_warning(copy_of, caplog):
    """The shards won without a word, where the reference (transformers) loads model.safetensors: other weights
    from the same folder."""
    from safetensors.torch import load_file, save_file

    checkpoint = copy_of()
    tensors = load_file(checkpoint / "model.safetensors")
    save_file({name: value * 0 + 7.0 for name, value in tensors.items()}, checkpoint / "model-00001-of-00001.safetensors")
    (checkpoint / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {name: "model-00001-of-00001.safetensors" for name in tensors}}))
    key = "action_head.action_decoder.layer1.W"
    with caplog.at_level("WARNING"):
        model = load_model(checkpoint, device="cpu")[0]
    assert torch.equal(model.state_dict()[key], tensors[key])
    assert "holds both model.safetensors and model.safetensors.index.json; loading model.safetensors" in caplog.text


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_an_integer_or_bool_weight_is_one_line_naming_the_tensor(copy_of, dtype, serve_error):
    """It loaded, and serve died in the warm-up with a 25-line torch RuntimeError."""
    from safetensors.torch import load_file, save_file

    checkpoint = copy_of()
    tensors = load_file(checkpoint / "model.safetensors")
    key = "action_head.action_decoder.layer1.W"
    tensors[key] = tensors[key].to(dtype)
    save_file(tensors, checkpoint / "model.safetensors")
    err = serve_error(checkpoint)
    assert f"1 tensor(s) not floating point: {key}: checkpoint {dtype} vs model torch.float32" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--inference-mode", "onnxruntime"], "inference mode 'onnxruntime' needs --onnx-dir (made by `gr00t-server export`)"),
    (["--inference-mode", "tensorrt", "--engine-dir", "/nonexistent/engines"],
     "--engine-dir /nonexistent/engines is not a folder (it does not exist); give the folder `gr00t-server build-engine` wrote"),
])
def test_a_backend_folder_flag_is_checked_before_the_checkpoint_loads(copy_of, capsys, flags, message):
    """It was checked after the whole model had loaded (minutes for a real checkpoint). The weights file here is
    damaged: a check after loading would report that instead."""
    from gr00t_server import cli

    checkpoint = copy_of()
    (checkpoint / "model.safetensors").write_bytes(b"not safetensors")
    assert cli.main(["serve", "--model-path", str(checkpoint), "--embodiment-tag", "new_embodiment", "--device", "cpu",
                     *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("mode, message", [
    ("onnxruntime", "ONNX export metadata not found: {folder}/export_metadata.json"),
    ("tensorrt", "inference mode 'tensorrt' needs TensorRT 10"),  # not installed here (no GPU)
])
def test_a_backend_without_its_metadata_or_install_is_refused_before_the_checkpoint_loads(copy_of, capsys, tmp_path,
                                                                                          mode, message):
    """They were found only after the whole checkpoint had loaded (minutes and 6 GB for the 3B model)."""
    from gr00t_server import cli

    pytest.importorskip("onnxruntime")
    checkpoint = copy_of()
    (checkpoint / "model.safetensors").write_bytes(b"not safetensors")  # a load would report this instead
    folder = tmp_path / "empty"
    folder.mkdir()
    flag = "--onnx-dir" if mode == "onnxruntime" else "--engine-dir"
    assert cli.main(["serve", "--model-path", str(checkpoint), "--device", "cpu", "--inference-mode", mode, flag,
                     str(folder)]) == 2
    assert message.format(folder=folder) in capsys.readouterr().err


def test_an_installed_onnxruntime_that_fails_to_import_is_reported_with_its_error_not_as_missing(tmp_path):
    """onnxruntime 1.18 beside numpy 2 fails to import; serve said it was not installed and to install the extra that
    installed it. Here an `onnxruntime` first on the path raises at import, as a build for numpy 1 does."""
    import os
    import subprocess

    from serving import SERVER_CLI, free_port

    broken = tmp_path / "site"
    (broken / "onnxruntime").mkdir(parents=True)
    (broken / "onnxruntime" / "__init__.py").write_text("raise ImportError('numpy.core.multiarray failed to import')\n")
    (broken / "onnxruntime-1.18.0.dist-info").mkdir()
    (broken / "onnxruntime-1.18.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime\n"
                                                                       "Version: 1.18.0\n")
    (tmp_path / "checkpoint").mkdir()  # the backend is checked before the checkpoint is read
    (tmp_path / "onnx").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(broken), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([*SERVER_CLI, "serve", "--model-path", str(tmp_path / "checkpoint"), "--device", "cpu",
                             "--port", str(free_port()), "--inference-mode", "onnxruntime", "--onnx-dir",
                             str(tmp_path / "onnx")], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "onnxruntime 1.18.0 is installed but failed to import (ImportError: numpy.core.multiarray failed to " \
           "import) beside numpy " in error, error
    assert "needs onnxruntime" not in error and "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a CUDA GPU")
@pytest.mark.parametrize("device", [[], ["--device", "cuda"]], ids=["default-device", "cuda-device"])
def test_verify_of_engines_without_a_cuda_gpu_says_tensorrt_needs_one_before_the_checkpoint_loads(copy_of, capsys,
                                                                                                 tmp_path, device):
    """It loaded the checkpoint on 'cuda' and failed advising device='cpu', which can never run a TensorRT engine."""
    from gr00t_server import cli

    checkpoint = copy_of()
    (checkpoint / "model.safetensors").write_bytes(b"not safetensors")  # a load would report this instead
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "engine_metadata.json").write_text("{}")
    assert cli.main(["verify", "--model-path", str(checkpoint), "--engine-dir", str(engines), *device]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inference mode 'tensorrt' needs" in err and "a CUDA GPU" in err, err
    assert "device='cpu'" not in err


def test_a_file_given_as_the_checkpoint_is_named_as_a_file(copy_of, serve_error):
    checkpoint = copy_of()
    assert f"{checkpoint / 'config.json'} is a file; give the checkpoint folder" in serve_error(checkpoint / "config.json")


def test_a_broken_link_as_the_weights_is_named_with_its_target(copy_of, serve_error):
    checkpoint = copy_of()
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "model.safetensors").symlink_to(checkpoint / "blobs" / "gone")
    assert f"model.safetensors is a broken link to {checkpoint / 'blobs' / 'gone'}" in serve_error(checkpoint)


@pytest.mark.parametrize("name", ["statistics.json", "processor_config.json", "embodiment_id.json"])
def test_a_broken_link_as_a_processor_file_is_named_with_its_target(copy_of, serve_error, name):
    """An interrupted hub-cache download leaves links to missing blobs: statistics.json was reported as absent, and
    a dangling embodiment_id.json silently gave way to the built-in ids."""
    checkpoint = copy_of()
    (checkpoint / name).unlink()
    (checkpoint / name).symlink_to(checkpoint / "blobs" / "gone")
    assert f"{name} is a broken link to {checkpoint / 'blobs' / 'gone'}" in serve_error(checkpoint)


def test_a_folder_whose_sub_folder_holds_the_checkpoint_names_that_sub_folder(copy_of, serve_error):
    """`hf download nvidia/GR00T-N1.7-LIBERO --local-dir X` puts each checkpoint in a sub-folder of X."""
    checkpoint = copy_of()
    repository = checkpoint.parent / "GR00T-N1.7-LIBERO"
    repository.mkdir()
    checkpoint.rename(repository / "libero_10")
    err = serve_error(repository)
    assert f"{repository} has no config.json; its sub-folders ['libero_10'] hold one" in err
    assert str(repository / "libero_10") in err


def test_pytorch_bin_weights_are_named_as_unsupported(copy_of, serve_error):
    checkpoint = copy_of()
    (checkpoint / "model.safetensors").rename(checkpoint / "pytorch_model.bin")
    assert "(pytorch_model.bin there: only safetensors weights are read; convert them)" in serve_error(checkpoint)


# --- 9. messages ---------------------------------------------------------------------------------------------


def test_statistics_missing_the_served_tag_are_reported_without_stray_quotes(copy_of, serve_error):
    checkpoint = copy_of()
    _edit_json(checkpoint / "statistics.json", lambda data: data.pop("new_embodiment") and None)
    err = serve_error(checkpoint)
    assert f"error: {checkpoint / 'statistics.json'} has no statistics for embodiment 'new_embodiment'" in err


def _pop(*path):
    def edit(data):
        for name in path[:-1]:
            data = data[name]
        data.pop(path[-1])
    return edit


@pytest.mark.parametrize("edit, message", [
    (_pop("new_embodiment", "action", "gripper"), "Action key 'gripper' not found in action statistics"),
    (_pop("new_embodiment", "state", "eef_9d"), "Joint group 'eef_9d' not found in state statistics"),
    (_pop("new_embodiment", "relative_action", "joints"), "Relative action statistics required for key 'joints'"),
    (_pop("new_embodiment", "relative_action"), "'relative_action' not found in statistics"),
], ids=["action-key", "state-key", "relative-key", "relative-group"])
def test_statistics_lacking_a_served_key_are_named_with_the_file_and_a_remedy(copy_of, serve_error, edit, message):
    # The message named neither the file nor what to do.
    checkpoint = copy_of()
    _edit_json(checkpoint / "statistics.json", edit)
    err = serve_error(checkpoint)
    assert f"error: {checkpoint / 'statistics.json'}: " in err and message in err, err
    assert "copy or download the checkpoint's statistics.json again, or recompute it" in err


def test_statistics_of_one_embodiment_at_the_top_level_name_the_keys_found_and_the_layout_expected(copy_of,
                                                                                                   serve_error):
    # One embodiment's groups written at the top level was reported as "has []".
    checkpoint = copy_of()
    _edit_json(checkpoint / "statistics.json", lambda data: data["new_embodiment"])
    err = serve_error(checkpoint)
    assert (f"error: {checkpoint / 'statistics.json'} has no statistics for embodiment 'new_embodiment'; its "
            "top-level keys are ['action', 'relative_action', 'state'], expected the layout "
            "{embodiment_tag: {state: ..., action: ...}}") in err, err
    assert "has []" not in err
