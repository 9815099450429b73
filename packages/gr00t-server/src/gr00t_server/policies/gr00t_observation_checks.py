"""Gr00tPolicy's observation checks beyond the modality configs': a lenient call's layout and batch sizes, frames an
exported ViT can take, the reference states of relative action keys, and instructions free of the backbone's special
tokens."""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from gr00t_client.flat import language_text
from gr00t_client.modality import ModalityConfig
from gr00t_client.policy import ObservationError, masked_array_refusal, unreal_dtype
from gr00t_server.processing.text import refuse_lone_surrogate

if TYPE_CHECKING:
    from gr00t_server.processing.processor import Gr00tN1d7Processor

# Embodiments trained on episodes without an instruction, which take an empty one: DROID's data holds them (the
# reference's droid_sample dataset has the empty string as its task 0, shared/reference server-eval.md §demo data).
EMPTY_INSTRUCTION_TAGS = frozenset({"oxe_droid_relative_eef_relative_joint"})


def _instruction(language: Any, key: str, row: int) -> str:
    """Row `row` of language `key` as an instruction: a string, or the first of a list (or 1-D array) of them (UTF-8
    bytes are decoded). ObservationError naming the key and row for anything else, strict or not: a number or None was
    read as its repr, bytes failed deep in the tokenizer."""
    listed = isinstance(language, (list, tuple)) or (isinstance(language, np.ndarray) and language.ndim == 1)
    text = language[0] if listed and len(language) else language  # a (B, 1) array's row too, as the reference reads it
    return language_text(text, f"language['{key}'] row {row}", "must be a str (each row a list of one str)")


def _holds_masked_array(value: Any) -> bool:
    """Whether `value` is a numpy masked array or a list/tuple holding one at any depth (lenient takes lists of
    per-row or per-step arrays): np.asarray drops the mask, so the model saw what lay under it."""
    if isinstance(value, np.ma.MaskedArray):
        return True
    return isinstance(value, (list, tuple)) and any(_holds_masked_array(item) for item in value)


class Gr00tObservationChecks:
    """Gr00tPolicy's checks of an observation: mixed into Gr00tPolicy, whose modality configs and processor it reads."""

    processor: Gr00tN1d7Processor
    embodiment_tag_value: str
    _modality_configs: Dict[str, ModalityConfig]
    language_key: str
    # The image grid (t, h, w in patches) and camera frame size (height, width) a full_pipeline export's ViT was traced
    # for, set when it is swapped in (swap_exported_modules); None while the ViT runs in PyTorch.
    exported_image_grid: Optional[List[int]] = None
    sample_image_size: Optional[Tuple[int, int]] = None
    # Serve instructions that are empty once formalized, whatever the embodiment (a fine-tune trained on episodes
    # without task text, as the reference serves it); Gr00tPolicy's allow_empty_instruction, serve's flag.
    allow_empty_instruction: bool = False

    def _batch_size(self, observation: Mapping[str, Any]) -> int:
        video_keys = self._modality_configs["video"].modality_keys
        if video_keys and video_keys[0] in observation.get("video", {}):
            return int(np.asarray(observation["video"][video_keys[0]]).shape[0])
        state_keys = self._modality_configs["state"].modality_keys
        return int(np.asarray(observation["state"][state_keys[0]]).shape[0])

    def _check_lenient_layout(self, observation: Any) -> None:
        """strict=False takes lists and other dtypes, but not a missing group or key, a None, a numpy masked array (or a
        list holding one), an array without its batch and time axes, or a time axis other than the checkpoint's
        delta_indices: ObservationError naming the entry and what it needs (these failed as a KeyError, an IndexError,
        or an internal error with a traceback in the server's log, and a video T or a masked array as a plausible
        action)."""
        if not isinstance(observation, Mapping):
            raise ObservationError(f"observation must be a dict with keys 'video', 'state', 'language'; got "
                                   f"{type(observation).__name__}")
        expected = (("video", self._modality_configs["video"].modality_keys, 5, "(B, T, H, W, 3)"),
                    ("state", self._modality_configs["state"].modality_keys, 3, "(B, T, D)"),
                    ("language", [self.language_key], 0, "a list of B rows, each a list of one str"))
        for group, keys, ndim, layout in expected:
            if not keys:
                continue
            values = observation.get(group)
            if not isinstance(values, Mapping):
                got = type(values).__name__ if group in observation else f"no '{group}' (keys {sorted(observation, key=str)})"
                raise ObservationError(f"observation['{group}'] must be a dict holding {keys}; got {got}")
            for key in keys:
                if key not in values:
                    raise ObservationError(f"{group} key '{key}' is missing from observation['{group}']; got keys "
                                           f"{sorted(values, key=str)}")
                value = values[key]
                if group == "language":
                    # not np.ndim: rows of different forms ([["a", "b"], ["c"]], [["a"], "b"]) make a ragged list
                    if not isinstance(value, (list, tuple, np.ndarray)) or getattr(value, "ndim", 1) == 0:
                        raise ObservationError(f"language['{key}'] must be {layout}; got {type(value).__name__}")
                    continue
                if _holds_masked_array(value):
                    raise ObservationError(masked_array_refusal(f"{group}['{key}']"))
                try:
                    shape = None if value is None else np.shape(value)
                except ValueError:  # a ragged list
                    shape = None
                if shape is None or len(shape) != ndim:
                    got = (type(value).__name__ if shape is None else
                           f"shape {shape}" if shape else f"a single {type(value).__name__} (no axes)")
                    raise ObservationError(f"{group}['{key}'] must have shape {layout}; got {got}")
                # Another T than the checkpoint's delta_indices gave the prompt more images per camera (or the state
                # vector other columns): a layout the model never saw, answered with a plausible action.
                horizon = len(self._modality_configs[group].delta_indices)
                if shape[1] != horizon:
                    raise ObservationError(
                        f"{group}['{key}'] has T={shape[1]} time steps (axis 1 of shape {shape}); this checkpoint's "
                        f"{group} delta_indices {list(self._modality_configs[group].delta_indices)} need T={horizon} "
                        f"(shape {layout})")
                unreal = unreal_dtype(value) if group == "state" else None  # a cast would read it as a number
                if unreal is not None:
                    raise ObservationError(f"{group}['{key}'] must hold real numbers (a bool, int or float dtype); got "
                                           f"dtype {unreal}")

    def _check_batch_sizes(self, observation: Mapping[str, Any], batch_size: int) -> None:
        """ObservationError naming the first video, state or language entry whose rows differ from `batch_size`
        (torch failed deep in the model, naming no key)."""
        entries = [(f"video['{key}']", observation.get("video", {}).get(key)) for key in self._modality_configs["video"].modality_keys]
        entries += [(f"state['{key}']", observation.get("state", {}).get(key)) for key in self._modality_configs["state"].modality_keys]
        entries.append((f"language['{self.language_key}']", observation.get("language", {}).get(self.language_key)))
        for name, value in entries:
            rows = len(value) if isinstance(value, (list, tuple)) else np.shape(value)[0] if np.ndim(value) else None
            if value is not None and rows != batch_size:
                raise ObservationError(f"{name} has {rows} rows; the observation's batch size is {batch_size} (every "
                                       "video, state and language entry needs one row per batch element)")

    def _check_exported_image_grid(self, video: Mapping[str, Any], frames_checked: bool = True) -> None:
        """ObservationError naming the camera, its frame size and the export's when a full_pipeline export's ViT
        cannot take the image grid the camera's frames make (it failed inside the model run, as an internal error).
        Without `frames_checked` (a lenient call) the processor's frame checks run first, on uint8 (B, T, H, W, 3)
        frames; other frames are left to the processing that converts them (channels-first frames were named "3x256"
        and a 0x0 one was a ZeroDivisionError here)."""
        traced = self.exported_image_grid
        if traced is None:
            return
        if not frames_checked:
            keys = self._modality_configs["video"].modality_keys
            if not all(isinstance(video.get(key), np.ndarray) and video[key].ndim == 5 and video[key].shape[-1] == 3
                       and video[key].dtype == np.uint8 for key in keys):
                return
            self.processor.check_video(self.embodiment_tag_value, video)
        grids = {}  # camera -> ((height, width), image grid)
        for key in self._modality_configs["video"].modality_keys:
            height, width = (int(side) for side in np.shape(video[key])[2:4])
            grids[key] = ((height, width), self.processor.frame_grid(height, width))
        wrong = [key for key, (_, grid) in grids.items() if grid != traced]
        if not wrong:
            return
        size = self.sample_image_size
        traced_for = f"{size[0]}x{size[1]} frames (image grid {traced})" if size else f"image grid {traced}"
        if len({tuple(grid) for _, grid in grids.values()}) > 1:  # no --image-size serves this request
            each = ", ".join(f"Video key '{key}' {h}x{w} {grid}" for key, ((h, w), grid) in grids.items())
            raise ObservationError(
                f"this request's camera frames make different image grids (t,h,w in patches): {each}; a full_pipeline "
                f"export's ViT serves one frame size for all cameras (traced for {traced_for}). Send every camera's "
                "frames in one size, or export with `--mode action_head`, which keeps the ViT in PyTorch.")
        (height, width), grid = grids[wrong[0]]
        raise ObservationError(
            f"Video key '{wrong[0]}' has {height}x{width} frames, which make image grid {grid} (t,h,w in patches); this "
            f"server's full_pipeline export traced its ViT for {traced_for} and serves that grid only. Send frames of "
            "that size (or of one the processor resizes onto its grid), or re-export with your cameras' frame size: "
            f"`gr00t-server export --image-size {height} {width} ...`.")

    def max_call_rows(self, observation: Any) -> Optional[int]:
        """The most rows one call of observations shaped like `observation` may hold within the vision-token budget
        (from its frames' shapes alone): a batching server merges no more (a merged call over it was refused, then
        bisected); None when the budget or the observation's video layout gives no such limit."""
        video = observation.get("video") if isinstance(observation, Mapping) else None
        if not isinstance(video, Mapping):
            return None
        return self.processor.max_rows_like(self.embodiment_tag_value, video)

    def _check_reference_states(self, observation: Mapping[str, Any]) -> None:
        try:
            self.processor.check_reference_states(self.embodiment_tag_value, observation["state"])
        except ValueError as exc:
            raise ObservationError(str(exc)) from None

    def _check_instructions(self, observation: Mapping[str, Any]) -> None:
        """ObservationError naming the language key, row and tokens when an instruction holds the backbone's special
        tokens (vision or chat placeholders): the model would read them as such, or fail inside transformers; or, as
        the tokenizer gets it (formalize_language off), a lone surrogate, on which the tokenizer fails. Likewise
        one that is empty once formalized ("", blanks, punctuation: an env's missing task field), which the model
        served as an action for no task, unless the embodiment was trained on empty ones (EMPTY_INSTRUCTION_TAGS) or
        allow_empty_instruction says the checkpoint was. The row is named as `rows [N]`, the form a rollout reads to
        error only that row's episode (refused_rows)."""
        blank_allowed = self.allow_empty_instruction or self.embodiment_tag_value in EMPTY_INSTRUCTION_TAGS
        for row, language in enumerate(observation["language"][self.language_key]):
            text = _instruction(language, self.language_key, row)
            read = self.processor.instruction_text(text)
            refuse_lone_surrogate(read, f"language['{self.language_key}'] row {row}")
            if not blank_allowed and _blank(read):
                what = ("empty" if not text else "blank (whitespace and invisible characters only)" if _blank(text)
                        else "nothing but whitespace and punctuation once formalized")
                raise ObservationError(
                    f"language['{self.language_key}'] rows [{row}]: {text[:80]!r} is {what}; a task instruction is "
                    "expected (an env whose task field is missing or renamed sends an empty one): send the task's "
                    "text, or serve a checkpoint trained on empty instructions with `gr00t-server serve "
                    "--allow-empty-instruction` (Gr00tPolicy(..., allow_empty_instruction=True))")
            found = self.processor.reserved_tokens_in(text)
            if found:
                raise ObservationError(
                    f"language['{self.language_key}'] rows [{row}]: the instruction holds the backbone's reserved "
                    f"token(s) {found}; an instruction must be plain text, without the tokenizer's special tokens")


# Letters that show nothing: the Hangul fillers and the braille blank (the others are format characters and marks)
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _blank(text: str) -> bool:
    """Whether `text` shows nothing: whitespace, format characters (a BOM, zero-width spaces and joiners, direction
    marks: what an empty UTF-8-with-BOM task file or a stripped emoji leaves), marks with nothing to combine with
    (variation selectors, the grapheme joiner) and the blank letters, which str.strip() keeps; formalize_language drops
    them, so with it off such an instruction was served as a task."""
    return not text.strip() or all(ch.isspace() or ch in _BLANK_LETTERS
                                   or unicodedata.category(ch) in ("Cf", "Mn", "Me") for ch in text)
