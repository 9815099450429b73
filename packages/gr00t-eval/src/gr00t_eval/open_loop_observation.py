"""The observations an open-loop evaluation sends: each step's history rows, the camera frames decoded a window at a
time, and the batched observation in the nested or flat form."""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from gr00t_client import ModalityConfig

from .key_matching import match_keys
from .policy_identity import NESTED_ONLY_POLICIES

logger = logging.getLogger("gr00t_eval.open_loop")  # the open-loop evaluation's one logger, whichever of its modules logs

# Frames per camera decoded and held at once: the frames of as many consecutive inference steps as fit. Decoding every
# step's frames before the first query held them all: a 20,000-step episode of two 480x640 cameras at
# --execution-horizon 1 needed 37 GB. Each window seeks once more, decoding up to a keyframe interval again.
FRAME_WINDOW = 128
# A flat observation key quoted in a server's error (a sim-wrapper policy's bare KeyError: 'state.arm').
_QUOTED_FLAT_KEY = re.compile(r"'(?:video|state|annotation|language)\.[^']+'")
# A server refusing a request over one of its size limits (gr00t-server's --max-language-chars, --max-image-pixels,
# ...): the key it quotes is the one too large, in whichever form was sent, so no observation form would fit better.
_LIMIT_REFUSAL = re.compile(r"this (?:server|policy) accepts at most")  # Gr00tPolicy's vision tokens: "policy"
FLAT_FORMAT_HINT = ("; the server's policy seems to want flat keys, and --observation-format auto sent the nested "
                    "form (the server did not say it serves the sim wrapper): run with --observation-format flat")


def resolve_observation_format(info: Any, requested: str, policy: Any = None) -> str:
    """"auto": the form the server reports in get_server_info `info` ("observation_format"), or that an in-process
    `policy` declares (its `observation_format`); else, for servers that do not report it, "flat" for a policy class
    naming the sim wrapper and "nested" otherwise (the reference server's form; it cannot be asked, info None)."""
    if requested != "auto":
        return requested
    reported = reported_observation_format(info)
    if reported is None and info is None:
        reported = _observation_form(getattr(policy, "observation_format", None))
    if reported is not None:
        return reported
    policy_class = info.get("policy_class", "") if isinstance(info, Mapping) else ""
    return "flat" if "Sim" in str(policy_class) else "nested"


def reported_observation_format(info: Any) -> Optional[str]:
    """The observation form ("flat" or "nested") get_server_info `info` reports its policy takes; None when it does
    not say (an older gr00t-server, a policy that does not declare it)."""
    return _observation_form(info.get("observation_format") if isinstance(info, Mapping) else None)


def _observation_form(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value in ("flat", "nested") else None


def format_hint(info: Any, requested: str, server_error: str) -> str:
    """What a trajectory's error adds to the server's error reply `server_error` when the observation form `requested`
    may not fit the policy that get_server_info `info` names; "" when it fits or nothing tells. Under "auto" only a
    server that neither reports the form nor names a policy this run knows gets the flat-keys guess, and never for a
    size-limit refusal."""
    policy_class = str(info.get("policy_class", "")) if isinstance(info, Mapping) else ""
    reported = reported_observation_format(info)
    known = reported is not None or "Sim" in policy_class or policy_class in NESTED_ONLY_POLICIES
    if requested == "auto":
        quotes_flat_key = _QUOTED_FLAT_KEY.search(server_error) and not _LIMIT_REFUSAL.search(server_error)
        return FLAT_FORMAT_HINT if not known and quotes_flat_key else ""  # auto sent the nested form to this server
    fits = reported or ("flat" if "Sim" in policy_class else "nested" if known else requested)
    if fits == requested:
        return ""
    return (f"; the server serves {policy_class}, which takes the {fits} observation form, and this run sent the "
            f"{requested} form: pass observation_format='{fits}' or 'auto' (--observation-format {fits} or auto)")


def history_steps(step: int, delta_indices: Sequence[int], length: int) -> np.ndarray:
    """Rows `step + delta`, clamped to the episode: the first frame repeats before its start, the last after its end."""
    return np.clip(step + np.asarray(delta_indices, dtype=np.int64), 0, length - 1)


class _StepFrames:
    """The decoded frames of some steps, indexed by step."""

    def __init__(self, steps: Sequence[int], frames: np.ndarray) -> None:
        self._row = {int(step): row for row, step in enumerate(steps)}
        self._frames = frames

    def __getitem__(self, steps: np.ndarray) -> np.ndarray:
        return self._frames[[self._row[int(step)] for step in steps]]


def frame_windows(inference_steps: Sequence[int], delta_indices: Sequence[int], length: int,
                  max_frames: Optional[int] = None) -> Iterator[Tuple[List[int], List[int]]]:
    """Runs of consecutive `inference_steps` whose history rows number at most `max_frames` (FRAME_WINDOW) together,
    or one step's rows when those are more, each with its rows sorted: the frames decoded and held at once."""
    max_frames = FRAME_WINDOW if max_frames is None else max_frames
    window: List[int] = []
    rows: set = set()
    for step in inference_steps:
        step_rows = set(history_steps(step, delta_indices, length).tolist())
        if window and len(rows | step_rows) > max_frames:
            yield window, sorted(rows)
            window, rows = [], set()
        window.append(step)
        rows |= step_rows
    if window:
        yield window, sorted(rows)


class _FrameWindows:
    """A trajectory's camera frames, decoded a window (frame_windows) at a time as the inference steps reach it, the
    window before released first."""

    def __init__(self, episode: Any, inference_steps: Sequence[int], configs: Mapping[str, ModalityConfig],
                 key_maps: Mapping[str, "_KeyMap"]) -> None:
        self._episode = episode
        self._sources = list(key_maps["video"].map.values()) if "video" in configs else []
        self._windows = (frame_windows(inference_steps, configs["video"].delta_indices, episode.length)
                         if self._sources else iter(()))
        self._steps: set = set()
        self._frames: Dict[str, _StepFrames] = {}

    def at(self, step: int) -> Dict[str, _StepFrames]:
        """The frames of the window holding inference step `step` (steps asked in order)."""
        if self._sources and step not in self._steps:
            self._frames = {}  # released before the next window is decoded, not after
            steps, rows = next(self._windows)
            self._steps = set(steps)
            self._frames = {source: _StepFrames(rows, self._episode.frames(source, rows)) for source in self._sources}
        return self._frames


class _EpisodeSteps:
    """An episode's state groups and language strings, read once per trajectory: reading them at every inference
    step made an evaluation quadratic in the episode's length."""

    def __init__(self, episode: Any) -> None:
        self._episode = episode
        self.length = episode.length
        self._states: Dict[str, np.ndarray] = {}
        self._language: Dict[str, List[str]] = {}

    def states(self, key: str) -> np.ndarray:
        if key not in self._states:
            self._states[key] = self._episode.states(key)
        return self._states[key]

    def language(self, key: str) -> List[str]:
        if key not in self._language:
            self._language[key] = self._episode.language(key)
        return self._language[key]


class _KeyMap:
    """Modality-config keys -> dataset keys (by name, then those left over by position when their counts match).
    `warned` holds the pairings already warned of in this run (its trajectories share it; each run has its own)."""

    def __init__(self, kind: str, wanted: Sequence[str], available: Sequence[str], warned: Optional[set] = None) -> None:
        matched = match_keys(wanted, available)
        if matched is None:
            missing = [k for k in wanted if k not in available]
            raise ValueError(f"the policy's {kind} keys {missing} are not in the dataset's meta/modality.json; it has {list(available)}")
        self.map, by_position = matched
        said = (kind, tuple(wanted), tuple(available))
        warned = set() if warned is None else warned
        if by_position and said not in warned:  # once per run, not once per trajectory (nor once per process)
            warned.add(said)
            logger.warning("policy %s keys %s are not the dataset's; matching by position: %s", kind,
                           [w for w, _ in by_position], ", ".join(f"{w} <- {a}" for w, a in by_position))


def observation_key_maps(configs: Mapping[str, ModalityConfig], dataset: Any,
                         warned: Optional[set] = None) -> Dict[str, _KeyMap]:
    """The policy's video, state and language keys paired with `dataset`'s (_KeyMap); ValueError naming the keys of
    the policy the dataset lacks. Checked once before a run (open_loop.check_open_loop_policy) and built again per
    trajectory from the same pairing, so a run that cannot pair them is refused before its output folder is touched."""
    return {kind: _KeyMap(kind, configs[kind].modality_keys if kind in configs else [], available, warned)
            for kind, available in (("video", dataset.video_keys), ("state", dataset.state_keys),
                                    ("language", dataset.language_keys))}


def build_observation(
    episode: Any, step: int, configs: Mapping[str, ModalityConfig], frames: Mapping[str, np.ndarray],
    key_maps: Mapping[str, _KeyMap], observation_format: str,
) -> Dict[str, Any]:
    """The batched (B=1) observation at `step`: nested {video, state, language} or flat `video.k`/`state.k`/language key."""
    length = episode.length
    nested: Dict[str, Dict[str, Any]] = {"video": {}, "state": {}, "language": {}}
    if "video" in configs:
        rows = history_steps(step, configs["video"].delta_indices, length)
        for key, source in key_maps["video"].map.items():
            nested["video"][key] = frames[source][rows][None]
    if "state" in configs:
        rows = history_steps(step, configs["state"].delta_indices, length)
        for key, source in key_maps["state"].map.items():
            nested["state"][key] = episode.states(source)[rows][None]
    if "language" in configs:
        for key, source in key_maps["language"].map.items():
            nested["language"][key] = [[episode.language(source)[min(step, length - 1)]]]
    if observation_format == "nested":
        return {m: v for m, v in nested.items() if m in configs}
    if observation_format != "flat":
        raise ValueError(f"observation_format must be 'nested' or 'flat', got {observation_format!r}")
    flat: Dict[str, Any] = {}
    for key, value in nested["video"].items():
        flat[f"video.{key}"] = value
    for key, value in nested["state"].items():
        flat[f"state.{key}"] = value
    for key, value in nested["language"].items():
        flat[key] = [value[0][0]]
    return flat
