"""Built-in modality configs, the registry, and loading configs from .json / .py files or a dataset."""

from __future__ import annotations

import json

import pytest

from eval.dataset_factory import make_dataset
from gr00t_client.embodiment import EmbodimentTag
from gr00t_client.modality import ActionRepresentation, ModalityConfig
from gr00t_eval.dataset import LeRobotDataset
from gr00t_server import modality_configs as mc


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    monkeypatch.setattr(mc, "MODALITY_CONFIGS", dict(mc.MODALITY_CONFIGS))


def test_builtin_tags_are_real_embodiment_tags_with_four_modalities():
    assert {"libero_sim", "simpler_env_widowx", "simpler_env_google", "oxe_droid_relative_eef_relative_joint"} <= set(mc.MODALITY_CONFIGS)
    for tag, configs in mc.MODALITY_CONFIGS.items():
        assert EmbodimentTag.resolve(tag).value == tag
        assert set(configs) == {"video", "state", "action", "language"}


def test_libero_config_matches_the_reference():
    configs = mc.get_modality_config(EmbodimentTag.LIBERO_PANDA)
    assert configs["video"].modality_keys == ["image", "wrist_image"]
    assert configs["state"].modality_keys == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    assert configs["action"].delta_indices == list(range(16))
    assert configs["language"].modality_keys == ["annotation.human.action.task_description"]


def test_droid_config_reads_two_frames_and_relative_actions():
    configs = mc.get_modality_config("OXE_DROID_RELATIVE_EEF_RELATIVE_JOINT")
    assert configs["video"].delta_indices == [-15, 0]
    assert configs["action"].horizon == 40
    assert [c.rep for c in configs["action"].action_configs] == [
        ActionRepresentation.RELATIVE, ActionRepresentation.ABSOLUTE, ActionRepresentation.RELATIVE,
    ]
    assert configs["action"].action_configs[0].state_key == "eef_9d"


def test_simpler_env_configs_have_horizon_8():
    assert mc.get_modality_config("simpler_env_widowx")["action"].horizon == 8
    assert mc.get_modality_config("simpler_env_google")["state"].modality_keys[3:7] == ["rx", "ry", "rz", "rw"]


def test_unregistered_tag_error_lists_registered_tags():
    with pytest.raises(ValueError, match="libero_sim"):
        mc.get_modality_config("my_robot")


def _configs(horizon=4):
    return {
        "state": ModalityConfig(delta_indices=[0], modality_keys=["arm"]),
        "action": ModalityConfig(delta_indices=list(range(horizon)), modality_keys=["arm"]),
    }


def test_register_accepts_same_config_twice_but_not_a_different_one():
    mc.register_modality_config("my_robot", _configs())
    mc.register_modality_config("my_robot", _configs())
    with pytest.raises(ValueError, match="already registered"):
        mc.register_modality_config("my_robot", _configs(horizon=8))
    mc.register_modality_config("my_robot", _configs(horizon=8), overwrite=True)
    assert mc.get_modality_config("my_robot")["action"].horizon == 8


def test_register_accepts_json_fields_and_rejects_unknown_modalities():
    mc.register_modality_config("json_robot", {"action": {"delta_indices": [0, 1], "modality_keys": ["a"]}})
    assert isinstance(mc.get_modality_config("json_robot")["action"], ModalityConfig)
    with pytest.raises(ValueError, match="unknown modalities"):
        mc.register_modality_config("bad_robot", {"actions": _configs()["action"]})


def test_load_json_file(tmp_path):
    path = tmp_path / "configs.json"
    path.write_text(json.dumps({k: v.to_json_dict() for k, v in _configs(horizon=5).items()}))
    configs = mc.load_modality_config_path(path)
    assert configs["action"].delta_indices == [0, 1, 2, 3, 4]


def test_json_file_with_bad_fields_names_the_modality(tmp_path):
    path = tmp_path / "configs.json"
    path.write_text(json.dumps({"action": {"delta_indices": [0], "modality_keys": []}}))
    with pytest.raises(ValueError, match="'action'.*modality_keys"):
        mc.load_modality_config_path(path)


def test_dataset_modality_json_is_refused_with_an_explanation(tmp_path):
    path = tmp_path / "modality.json"
    path.write_text(json.dumps({"state": {"arm": {"start": 0, "end": 3}}, "action": {"arm": {"start": 0, "end": 3}}}))
    with pytest.raises(ValueError, match="dataset meta/modality.json"):
        mc.load_modality_config_path(path)


def test_load_python_file_that_registers_a_config(tmp_path):
    path = tmp_path / "my_config.py"
    path.write_text(
        "from gr00t_client.modality import ModalityConfig\n"
        "from gr00t_server.modality_configs import register_modality_config\n"
        "register_modality_config('py_robot', {\n"
        "    'action': ModalityConfig(delta_indices=[0, 1, 2], modality_keys=['arm']),\n"
        "    'state': ModalityConfig(delta_indices=[0], modality_keys=['arm']),\n"
        "})\n"
    )
    configs = mc.load_modality_config_path(path)
    assert configs["action"].horizon == 3
    assert mc.load_modality_config_path(path) == configs  # importing the same file twice is fine
    assert mc.get_modality_config("py_robot") is configs


def test_python_file_that_registers_nothing_is_an_error(tmp_path):
    path = tmp_path / "empty_config.py"
    path.write_text("x = 1\n")
    with pytest.raises(ValueError, match="exactly one tag"):
        mc.load_modality_config_path(path)


def test_other_suffixes_and_missing_files_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        mc.load_modality_config_path(tmp_path / "missing.json")
    (tmp_path / "c.yaml").write_text("")
    with pytest.raises(ValueError, match=".yaml"):
        mc.load_modality_config_path(tmp_path / "c.yaml")


def test_derive_from_dataset(tmp_path):
    dataset = LeRobotDataset(make_dataset(tmp_path / "ds", lengths=(3,), cameras=("image",)))
    configs = mc.derive_from_dataset(dataset, action_horizon=6)
    assert configs["video"].modality_keys == ["image"] and configs["video"].delta_indices == [0]
    assert configs["state"].modality_keys == ["arm", "gripper"] and configs["state"].delta_indices == [0]
    assert configs["action"].delta_indices == list(range(6))
    assert configs["language"].modality_keys == ["annotation.human.action.task_description"]
