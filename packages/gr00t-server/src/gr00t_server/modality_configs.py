"""Built-in modality configs per embodiment tag, a registry for custom ones, and loaders (.json / .py / dataset)."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple, Union

from gr00t_client.embodiment import EmbodimentTag, resolve_tag
from gr00t_client.modality import ActionConfig, ModalityConfig, modality_configs_from_json

if TYPE_CHECKING:  # gr00t-eval is the optional `replay` extra; only replay passes a dataset here
    from gr00t_eval.dataset import LeRobotDataset

logger = logging.getLogger(__name__)

ModalityConfigs = Dict[str, ModalityConfig]
MODALITIES = ("video", "state", "action", "language")


def _configs(video: List[str], state: List[str], action: List[str], horizon: int, language: str,
             *, video_delta=(0,), action_configs: Optional[List[ActionConfig]] = None) -> ModalityConfigs:
    return {
        "video": ModalityConfig(delta_indices=list(video_delta), modality_keys=video),
        "state": ModalityConfig(delta_indices=[0], modality_keys=state),
        "action": ModalityConfig(delta_indices=list(range(horizon)), modality_keys=action, action_configs=action_configs),
        "language": ModalityConfig(delta_indices=[0], modality_keys=[language]),
    }


def _absolute(n: int) -> List[ActionConfig]:
    return [ActionConfig(rep="ABSOLUTE", type="NON_EEF", format="DEFAULT") for _ in range(n)]


_XYZ_RPY_GRIPPER = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]

# Only the tags whose four modalities the reference documents (model.md §3.1, server-eval.md §7). It also
# names unitree_g1_sonic (action motion_token/left_hand_joints/right_hand_joints, horizon 40),
# unitree_g1_full_body_with_waist_height_nav_cmd (horizon 50) and the robocasa tags, without their
# camera/state keys; those must come from a checkpoint, a --modality-config-path file or the dataset.
MODALITY_CONFIGS: Dict[str, ModalityConfigs] = {
    "oxe_droid_relative_eef_relative_joint": _configs(
        ["exterior_image_1_left", "wrist_image_left"],
        ["eef_9d", "gripper_position", "joint_position"],
        ["eef_9d", "gripper_position", "joint_position"],
        40,
        "annotation.language.language_instruction",
        video_delta=(-15, 0),
        action_configs=[
            ActionConfig(rep="RELATIVE", type="EEF", format="XYZ_ROT6D", state_key="eef_9d"),
            ActionConfig(rep="ABSOLUTE", type="NON_EEF", format="DEFAULT", state_key="gripper_position"),
            ActionConfig(rep="RELATIVE", type="NON_EEF", format="DEFAULT", state_key="joint_position"),
        ],
    ),
    "libero_sim": _configs(
        ["image", "wrist_image"], list(_XYZ_RPY_GRIPPER), list(_XYZ_RPY_GRIPPER), 16,
        "annotation.human.action.task_description", action_configs=_absolute(7),
    ),
    "simpler_env_widowx": _configs(
        ["image_0"], ["x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper"], list(_XYZ_RPY_GRIPPER), 8,
        "annotation.human.action.task_description",
    ),
    "simpler_env_google": _configs(
        ["image"], ["x", "y", "z", "rx", "ry", "rz", "rw", "gripper"], list(_XYZ_RPY_GRIPPER), 8,
        "annotation.human.action.task_description",
    ),
}
_BUILT_IN_TAGS = frozenset(MODALITY_CONFIGS)  # a .py config file registering none of its own must not get these

_lock = threading.Lock()
_recorded: Optional[List[str]] = None  # tags registered while a .py config file is being imported


def _tag_key(tag: Union[EmbodimentTag, str]) -> str:
    if isinstance(tag, EmbodimentTag):
        return tag.value
    if not isinstance(tag, str) or not tag.strip():
        raise ValueError(f"embodiment tag must be a non-empty str or EmbodimentTag, got {tag!r}")
    try:
        return EmbodimentTag.resolve(tag).value
    except ValueError:
        return tag.strip()  # custom tags are allowed for registration


def _validated(configs: Mapping[str, Any], source: str) -> ModalityConfigs:
    if not isinstance(configs, Mapping) or not configs:
        raise ValueError(f"{source}: modality configs must be a non-empty dict {{modality: ModalityConfig}}, got {configs!r:.100}")
    unknown = sorted(set(configs) - set(MODALITIES) - {"rl_info"})
    if unknown:
        raise ValueError(f"{source}: unknown modalities {unknown}; expected a subset of {list(MODALITIES)}")
    try:
        return modality_configs_from_json(configs)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc


def register_modality_config(tag: Union[EmbodimentTag, str], configs: Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Register {modality: ModalityConfig (or its JSON fields)} for a tag.

    Registering the same configs again is a no-op (so a config file may be imported twice); different
    configs for a registered tag need overwrite=True.
    """
    key = _tag_key(tag)
    parsed = _validated(configs, f"register_modality_config({key!r})")
    with _lock:
        existing = MODALITY_CONFIGS.get(key)
        same = existing is not None and _as_json(existing) == _as_json(parsed)
        if existing is not None and not same and not overwrite:
            raise ValueError(f"modality config for tag {key!r} is already registered with different values; pass overwrite=True")
        if not same:
            MODALITY_CONFIGS[key] = parsed
        if _recorded is not None:
            _recorded.append(key)
    logger.debug("registered modality config for %s", key)


def get_modality_config(tag: Union[EmbodimentTag, str]) -> ModalityConfigs:
    """The registered configs of a tag; ValueError listing the registered tags when absent."""
    key = _tag_key(tag)
    if key not in MODALITY_CONFIGS:
        raise ValueError(f"no modality config registered for tag {key!r}; registered tags: {sorted(MODALITY_CONFIGS)}")
    return MODALITY_CONFIGS[key]


def _as_json(configs: Mapping[str, ModalityConfig]) -> str:
    return json.dumps({k: v.to_json_dict() for k, v in configs.items()}, sort_keys=True)


def load_modality_config_path(path: Union[str, Path], tag: Optional[Union[EmbodimentTag, str]] = None) -> ModalityConfigs:
    """Load configs from a .json file ({modality: ModalityConfig fields}) or a .py file that calls
    register_modality_config. For a .py file registering several tags, `tag` picks one."""
    return load_modality_config_and_tag(path, tag)[1]


def load_modality_config_and_tag(path: Union[str, Path], tag: Optional[Union[EmbodimentTag, str]] = None
                                 ) -> Tuple[Optional[str], ModalityConfigs]:
    """As load_modality_config_path, with the tag the configs are registered under (a .py file's; None for .json):
    without `tag`, the one tag the .py file registers; with it, one of the file's tags."""
    path = Path(path)
    if path.is_dir():  # it said "not found" of a folder that is there
        raise FileNotFoundError(f"modality config path {path} is a folder; expected a .json or .py file")
    if not path.is_file():
        raise FileNotFoundError(f"modality config file not found: {path}")
    if path.suffix == ".json":
        return None, _load_json(path)
    if path.suffix == ".py":
        return _load_python(path, tag)
    raise ValueError(f"{path}: modality config files must end in .json or .py, got {path.suffix!r}")


def _load_json(path: Path) -> ModalityConfigs:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc
    if isinstance(data, Mapping) and any(
        isinstance(v, Mapping) and any(isinstance(e, Mapping) and ("start" in e or "original_key" in e) for e in v.values())
        for v in data.values()
    ):
        raise ValueError(
            f"{path}: this looks like a dataset meta/modality.json (start/end/original_key entries); "
            "expected {modality: {delta_indices, modality_keys, ...}}"
        )
    return _validated(data, str(path))  # its errors name the file (they named it twice when wrapped here too)


def _file_tag_key(tag: Union[EmbodimentTag, str], tags: List[str]) -> str:
    """The key of `tag` among the tags a config file registered, by resolve_tag's rule as a checkpoint's tags are (a
    custom tag in another case names the file's one tag of that spelling); `tag`'s own key when none matches."""
    key = _tag_key(tag)
    if tags and key not in tags:
        try:
            return resolve_tag(tag, tags)[1]
        except ValueError:
            pass  # the caller names the file's tags
    return key


def _load_python(path: Path, tag: Optional[Union[EmbodimentTag, str]]) -> Tuple[str, ModalityConfigs]:
    global _recorded
    module_name = f"_gr00t_modality_config_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: cannot import as a Python module")
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # as the reference does, so the file can import its neighbours
    recorded: List[str] = []
    with _lock:
        previous, _recorded = _recorded, recorded
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's code: its error, named with the file, is a bad config like any
        sys.modules.pop(module_name, None)  # other; a sys.exit(0) in it must not end the server's start as a clean stop
        raise ValueError(f"{path}: running the modality config file {_what_it_did(exc)}; expected a .py file that "
                         "calls register_modality_config(tag, configs)") from exc
    finally:
        with _lock:
            _recorded = previous
    logger.debug("Loaded modality config: %s", path)  # serve's start-up block says which config it serves
    tags = sorted(set(recorded))
    if tag is not None:
        key = _file_tag_key(tag, tags)
        if not tags and key in _BUILT_IN_TAGS:  # a file that forgot register_modality_config: the same stand-in
            raise ValueError(f"{path}: registers no modality configs; expected a .py file that calls "
                             f"register_modality_config(tag, configs) (the built-in configs of {key!r} would stand in "
                             "for the file's)")
        if tags and key not in tags:  # a built-in tag's configs would silently stand in for the file's
            raise ValueError(f"{path}: registers modality configs for the tags {tags}, not for {key!r}; choose one of "
                             "them as the embodiment tag (--embodiment-tag), or leave it out when there is one")
        return key, get_modality_config(key)
    if len(tags) != 1:
        raise ValueError(
            f"{path}: expected the file to call register_modality_config for exactly one tag, it registered {tags}; "
            "pass the embodiment tag (--embodiment-tag) to choose"
        )
    return tags[0], MODALITY_CONFIGS[tags[0]]


def _what_it_did(exc: BaseException) -> str:
    """`raised TypeError: message`, or `called sys.exit(0)` for a SystemExit."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({'' if exc.code is None else repr(exc.code)})"
    message = (str(exc).strip().splitlines() or [""])[0]
    return f"raised {type(exc).__name__}{': ' + message if message else ''}"


def derive_from_dataset(dataset: LeRobotDataset, action_horizon: int = 16) -> ModalityConfigs:
    """Configs for replaying a LeRobotDataset: every camera/state group at [0], actions over range(action_horizon),
    the dataset's first language key at [0]. Modalities the dataset lacks are left out."""
    if action_horizon < 1:
        raise ValueError(f"action_horizon must be >= 1, got {action_horizon}")
    configs: ModalityConfigs = {}
    if dataset.video_keys:
        configs["video"] = ModalityConfig(delta_indices=[0], modality_keys=list(dataset.video_keys))
    if dataset.state_keys:
        configs["state"] = ModalityConfig(delta_indices=[0], modality_keys=list(dataset.state_keys))
    if not dataset.action_keys:
        raise ValueError(f"dataset {getattr(dataset, 'root', dataset)} has no action keys in meta/modality.json")
    configs["action"] = ModalityConfig(delta_indices=list(range(action_horizon)), modality_keys=list(dataset.action_keys))
    if dataset.language_keys:
        configs["language"] = ModalityConfig(delta_indices=[0], modality_keys=[dataset.language_keys[0]])
    else:
        logger.warning("dataset %s has no language keys; the derived config has no 'language' modality", getattr(dataset, "root", dataset))
    return configs
