"""ModalityConfig and ActionConfig: the reference fields, checks and JSON form (model.md §3.1)."""

import dataclasses
import json

import pytest

from gr00t_client import ActionConfig, ActionFormat, ActionRepresentation, ActionType, ModalityConfig
from gr00t_client.modality import modality_configs_from_json, modality_configs_to_json

# What the reference's to_json_serializable writes for a DROID-like action config: enums by name.
REFERENCE_ACTION_JSON = {
    "delta_indices": [0, 1, 2],
    "modality_keys": ["eef_9d", "gripper_position"],
    "sin_cos_embedding_keys": None,
    "mean_std_embedding_keys": None,
    "action_configs": [
        {"rep": "RELATIVE", "type": "EEF", "format": "XYZ_ROT6D", "state_key": "eef_9d"},
        {"rep": "ABSOLUTE", "type": "NON_EEF", "format": "DEFAULT", "state_key": None},
    ],
}


def test_fields_are_the_reference_fields_in_reference_order():
    names = [f.name for f in dataclasses.fields(ModalityConfig)]
    assert names == ["delta_indices", "modality_keys", "sin_cos_embedding_keys", "mean_std_embedding_keys", "action_configs"]
    assert [f.name for f in dataclasses.fields(ActionConfig)] == ["rep", "type", "format", "state_key"]


def test_optional_fields_default_to_none():
    config = ModalityConfig(delta_indices=[0], modality_keys=["image"])
    assert (config.sin_cos_embedding_keys, config.mean_std_embedding_keys, config.action_configs) == (None, None, None)
    assert config.horizon == 1


def test_enum_values_match_the_reference():
    assert {m.name: m.value for m in ActionRepresentation} == {"RELATIVE": "relative", "DELTA": "delta", "ABSOLUTE": "absolute"}
    assert {m.name: m.value for m in ActionType} == {"EEF": "eef", "NON_EEF": "non_eef"}
    assert {m.name: m.value for m in ActionFormat} == {"DEFAULT": "default", "XYZ_ROT6D": "xyz+rot6d", "XYZ_ROTVEC": "xyz+rotvec"}


def test_json_form_is_what_the_reference_writes_with_enums_by_name():
    config = ModalityConfig(
        delta_indices=[0, 1, 2],
        modality_keys=["eef_9d", "gripper_position"],
        action_configs=[
            ActionConfig(ActionRepresentation.RELATIVE, ActionType.EEF, ActionFormat.XYZ_ROT6D, "eef_9d"),
            ActionConfig(ActionRepresentation.ABSOLUTE, ActionType.NON_EEF),
        ],
    )
    assert config.to_json_dict() == REFERENCE_ACTION_JSON
    assert list(config.to_json_dict()) == list(REFERENCE_ACTION_JSON)
    assert json.loads(config.to_json()) == REFERENCE_ACTION_JSON


def test_reference_json_parses_back_to_an_equal_config():
    config = ModalityConfig.from_json_dict(REFERENCE_ACTION_JSON)
    assert config.action_configs[0] == ActionConfig(ActionRepresentation.RELATIVE, ActionType.EEF, ActionFormat.XYZ_ROT6D, "eef_9d")
    assert ModalityConfig.from_json(config.to_json()) == config


def test_action_config_dicts_are_parsed_on_construction():
    config = ModalityConfig(delta_indices=[0], modality_keys=["joints"], action_configs=[{"rep": "DELTA", "type": "NON_EEF"}])
    assert config.action_configs == [ActionConfig(ActionRepresentation.DELTA, ActionType.NON_EEF, ActionFormat.DEFAULT, None)]


def test_unknown_enum_name_is_an_error_listing_the_known_names():
    with pytest.raises(ValueError, match="RELATIVE, DELTA, ABSOLUTE"):
        ActionConfig(rep="SIDEWAYS", type="EEF")


def test_none_delta_indices_is_rejected_like_the_reference():
    with pytest.raises(ValueError, match="delta_indices must be a non-None list"):
        ModalityConfig(delta_indices=None, modality_keys=["a"])


@pytest.mark.parametrize("keys", [[], None, "image"])
def test_empty_or_non_list_modality_keys_are_rejected_like_the_reference(keys):
    with pytest.raises(ValueError, match="modality_keys must be a non-empty list"):
        ModalityConfig(delta_indices=[0], modality_keys=keys)


def test_action_configs_must_have_one_entry_per_key():
    with pytest.raises(ValueError, match="action_configs has 1 entries but modality_keys has 2"):
        ModalityConfig(delta_indices=[0], modality_keys=["a", "b"], action_configs=[{"rep": "RELATIVE", "type": "EEF"}])


def test_unknown_json_fields_are_named_in_the_error():
    with pytest.raises(ValueError, match="normalization_mode"):
        ModalityConfig.from_json_dict({"delta_indices": [0], "modality_keys": ["a"], "normalization_mode": "minmax"})


def test_missing_required_json_fields_are_named_in_the_error():
    with pytest.raises(ValueError, match="modality_keys"):
        ModalityConfig.from_json_dict({"delta_indices": [0]})


def test_config_maps_round_trip_and_errors_name_the_modality():
    configs = {"action": ModalityConfig.from_json_dict(REFERENCE_ACTION_JSON)}
    assert modality_configs_from_json(modality_configs_to_json(configs)) == configs
    with pytest.raises(ValueError, match="modality config 'state'"):
        modality_configs_from_json({"state": {"delta_indices": None, "modality_keys": ["a"]}})
