"""Processor-file behaviour no test held (audit13b mutation testing, area clientimg): values at their limits
(an action horizon equal to max_action_horizon, a crop fraction of exactly 1 or above it, a constant dimension
whose min equals its max, a zero std), a crop of another width than height, and a damaged tag's message kept."""

import pytest

from gr00t_server.processing.config import parse_statistics, processor_config_from_kwargs

_MODALITIES = {
    "video": {"delta_indices": [0], "modality_keys": ["image"]},
    "state": {"delta_indices": [0], "modality_keys": ["x"]},
    "action": {"delta_indices": [0, 1], "modality_keys": ["x"]},
    "language": {"delta_indices": [0], "modality_keys": ["task"]},
}
_RECIPE = {"use_percentiles": True, "use_albumentations": True, "shortest_image_edge": 256, "crop_fraction": 0.95}


def _config(**changes):
    return processor_config_from_kwargs({"modality_configs": {"t": _MODALITIES}, **_RECIPE, **changes})


def test_an_action_horizon_equal_to_max_action_horizon_is_accepted():
    assert _config(max_action_horizon=2).max_action_horizon == 2


@pytest.mark.parametrize("fraction, ok", [(1, True), (1.0, True), (1.01, False), (2, False), (-0.5, False)])
def test_crop_fraction_is_taken_in_zero_to_one_inclusive_of_one(fraction, ok):
    """A crop fraction over 1 asked for a crop larger than the frame (a silently uncropped image)."""
    if ok:
        assert _config(crop_fraction=fraction).resolved_crop_fraction == 1.0
    else:
        with pytest.raises(ValueError, match=r"field 'crop_fraction' .* a number in \(0, 1\]"):
            _config(crop_fraction=fraction)


def test_the_crop_fraction_from_sizes_is_the_crop_height_over_the_target_height():
    """model.md §3.4: image_crop_size[0] / image_target_size[0], even when the crop is not square."""
    config = _config(crop_fraction=None, image_crop_size=[230, 200], image_target_size=[256, 256])
    assert config.resolved_crop_fraction == pytest.approx(230 / 256)


@pytest.mark.parametrize("size", [[0, 256], [256, 256, 3], [256.0, 256], [True, 256]])
def test_an_image_size_that_is_not_two_positive_ints_is_refused(size):
    with pytest.raises(ValueError, match=r"field 'image_target_size' .* \[h, w\] of ints >= 1"):
        _config(image_target_size=size)


def _stats(**stats):
    return {"t": {"state": {"x": stats}}}


def test_a_constant_dimension_whose_min_equals_its_max_loads():
    """A gripper that never moved in the training data has min == max (and std 0): only an inverted range is refused."""
    parsed = parse_statistics(_stats(min=[0.0, 1.0], max=[0.0, 2.0], q01=[0.5, 1.0], q99=[0.5, 2.0], std=[0.0, 0.1],
                                     mean=[0.0, 1.5]))
    assert parsed["t"]["state"]["x"]["max"].tolist() == [0.0, 2.0]


@pytest.mark.parametrize("stats, message", [
    ({"min": [0.0, 0.0], "max": [1.0, 1.0, 1.0]}, "stats have different lengths"),
    ({"min": [[0.0, 0.0]], "max": [0.0, 1.0]}, "['min'] has shape (1, 2); a state or action key's statistics must be 1-D"),
    ({"std": [0.1, -0.1]}, "std has a negative value"),
    ({"mean": []}, "must be a non-empty list of numbers"),
])
def test_statistics_no_normalization_can_use_are_refused_naming_the_key(stats, message):
    with pytest.raises(ValueError) as caught:
        parse_statistics(_stats(**stats))
    assert "statistics['t']['state']['x']" in str(caught.value) and message in str(caught.value)


def test_relative_action_statistics_of_two_shapes_are_refused_naming_the_key():
    stats = {"t": {"relative_action": {"x": {"min": [[0.0, 0.0], [0.0, 0.0]], "max": [0.0, 1.0]}}}}
    with pytest.raises(ValueError, match=r"statistics\['t'\]\['relative_action'\]\['x'\].*min has shape \(2, 2\) but max "
                                         r"has \(2,\)"):
        parse_statistics(stats)


def test_a_damaged_tag_is_left_out_with_its_message_and_the_others_load():
    errors = {}
    parsed = parse_statistics({**_stats(min=[1.0], max=[0.0]), "u": {"state": {"x": {"min": [0.0], "max": [1.0]}}}},
                              errors)
    assert list(parsed) == ["u"]
    assert list(errors) == ["t"] and "the range is inverted" in errors["t"]
