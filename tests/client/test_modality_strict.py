"""ModalityConfig keeps what it is given (generators included), takes only whole-number delta_indices and refuses
repeated keys, while every config a reference peer sends still decodes."""

import json
import re

import msgpack
import numpy as np
import pytest

from gr00t_client import ModalityConfig, ObservationError, WireDecodeError, codec
from gr00t_client.policy import validate_observation
from reference_peer import libero_like_configs

# --- iterables are kept, not consumed by a check ---------------------------------------------------------


def test_modality_keys_given_as_a_generator_are_kept():
    config = ModalityConfig(delta_indices=[0], modality_keys=(key for key in ["x", "y"]))
    assert config.modality_keys == ["x", "y"]


@pytest.mark.parametrize("field", ["sin_cos_embedding_keys", "mean_std_embedding_keys"])
def test_embedding_keys_given_as_a_generator_are_kept(field):
    config = ModalityConfig(delta_indices=[0], modality_keys=["x", "y"], **{field: (key for key in ["x"])})
    assert getattr(config, field) == ["x"]


def test_delta_indices_given_as_a_generator_or_range_are_kept():
    assert ModalityConfig(delta_indices=(i for i in [-2, 0]), modality_keys=["x"]).delta_indices == [-2, 0]
    assert ModalityConfig(delta_indices=range(3), modality_keys=["x"]).delta_indices == [0, 1, 2]


def test_a_config_made_from_a_generator_still_validates_its_keys():
    config = ModalityConfig(delta_indices=[0], modality_keys=(key for key in ["x", "y"]))
    with pytest.raises(ObservationError, match="State key 'x' is missing"):
        validate_observation({"state": {}}, {"state": config})


def test_an_empty_generator_of_modality_keys_is_refused():
    with pytest.raises(ValueError, match=r"modality_keys must be a non-empty list of str, got \[\]"):
        ModalityConfig(delta_indices=[0], modality_keys=(key for key in []))


def test_modality_keys_that_are_not_iterable_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="modality_keys must be a non-empty list of str, got 5"):
        ModalityConfig(delta_indices=[0], modality_keys=5)


# --- delta_indices: whole numbers only --------------------------------------------------------------------


@pytest.mark.parametrize("index", [True, False, np.bool_(True), "3", b"3", 0.9, 2.99, float("nan"), float("inf"), None, [1]])
def test_a_delta_index_that_is_not_a_whole_number_is_refused_naming_the_field_and_value(index):
    with pytest.raises(ValueError, match=rf"delta_indices must be a list of ints, got {re.escape(repr(index))} in "):
        ModalityConfig(delta_indices=[0, index], modality_keys=["x"])


def test_delta_indices_that_are_not_iterable_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="delta_indices must be a list of ints, got 3"):
        ModalityConfig(delta_indices=3, modality_keys=["x"])


def test_numpy_ints_and_whole_floats_are_taken_as_ints():
    indices = [np.int64(-15), np.int32(0), 2.0, np.float32(3.0), np.uint8(4)]
    config = ModalityConfig(delta_indices=indices, modality_keys=["x"])
    assert config.delta_indices == [-15, 0, 2, 3, 4]
    assert all(type(index) is int for index in config.delta_indices)
    assert json.loads(config.to_json())["delta_indices"] == [-15, 0, 2, 3, 4]


def test_delta_indices_from_json_that_are_strings_or_fractions_are_refused():
    with pytest.raises(ValueError, match=r"delta_indices must be a list of ints, got '3'"):
        ModalityConfig.from_json_dict({"delta_indices": ["3", 1], "modality_keys": ["x"]})
    with pytest.raises(ValueError, match=r"delta_indices must be a list of ints, got 2.99"):
        ModalityConfig.from_json_dict({"delta_indices": [0, 2.99], "modality_keys": ["x"]})


def test_a_config_with_fractional_delta_indices_on_the_wire_is_a_wire_decode_error():
    message = msgpack.packb({"__ModalityConfig__": True, "as_json": {"delta_indices": [0.5], "modality_keys": ["x"]}})
    with pytest.raises(WireDecodeError, match=r"Malformed ModalityConfig payload: delta_indices must be a list of ints, got 0.5"):
        codec.decode(message)


# --- repeated keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["RELATIVE", {"rep": "RELATIVE", "type": "NON_EEF"}])
def test_action_configs_that_are_not_a_list_are_refused_quoting_the_whole_value(value):
    with pytest.raises(ValueError, match=rf"action_configs must be a list of action configs.*got {re.escape(repr(value))}"):
        ModalityConfig(delta_indices=[0], modality_keys=["x"], action_configs=value)


def test_repeated_modality_keys_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"modality_keys must not repeat a key, got \['x'\] more than once in \['x', 'y', 'x'\]"):
        ModalityConfig(delta_indices=[0], modality_keys=["x", "y", "x"])


# --- what peers send still decodes ------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", [codec.encode, codec.encode_early_n16])
def test_every_libero_like_config_round_trips_in_both_wire_formats(encoder):
    configs = libero_like_configs()
    assert codec.decode(encoder(configs)) == configs


@pytest.mark.parametrize("form", ["map", "json-str", "json-bytes"])
def test_a_reference_droid_like_config_decodes_in_every_as_json_form(form):
    as_json = {
        "delta_indices": [-15, 0],
        "modality_keys": ["exterior_image_1_left", "wrist_image_left"],
        "sin_cos_embedding_keys": None,
        "mean_std_embedding_keys": None,
        "action_configs": None,
    }
    payload = {"map": as_json, "json-str": json.dumps(as_json), "json-bytes": json.dumps(as_json).encode()}[form]
    config = codec.decode(msgpack.packb({"__ModalityConfig_class__": True, "as_json": payload}))
    assert config.to_json_dict() == as_json
