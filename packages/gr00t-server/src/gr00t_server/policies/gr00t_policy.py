"""Gr00tPolicy: a GR00T N1.7 checkpoint behind the BasePolicy API (model.md §1.2, §3, §4.3).

Options of `get_action` (seed, noise, rtc, denoising_steps): see gr00t_options.py, which checks them.
Stage timing: after each get_action, `policy.last_timing` (per calling thread) holds {"preprocess_ms",
"model_ms", "postprocess_ms"} of that call; servers add it to `server_timing`.
Rows whose prompts have different token counts are left-padded to the longest; each still gets its single-call
result (Gr00tN1d7ActionHead.process_backbone_features). The reference's VL self-attention has no padding mask, so
there a padded row's action depended on the other rows of its batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple, Union

import numpy as np
import torch

from gr00t_client.embodiment import EmbodimentTag, resolve_tag
from gr00t_client.modality import ModalityConfig, copy_modality_configs
from gr00t_client.policy import BasePolicy, ObservationError, validate_observation
from gr00t_server.fork_locks import renew_locks_after_fork
from gr00t_server.model.checkpoint import (checkpoint_file_identities, load_model, refuse_changed_files,
                                           resolve_checkpoint_dir)
from gr00t_server.model.backbone_config import COSMOS_REASON2_2B_CONFIG
from gr00t_server.model.config import CONFIG_NAME, Gr00tN1d7Config
from gr00t_server.processing.checkpoint_files import EMBODIMENT_ID_NAME, PROCESSOR_CONFIG_NAME, STATISTICS_NAME
from gr00t_server.processing.config import load_processor_config
from gr00t_server.processing.processor import TOKENIZER_FILE_NAMES, Gr00tN1d7Processor
from gr00t_server.processing.text import IMAGE_PAD_TOKEN, refuse_lone_surrogate
from gr00t_server.processing.vision_patches import PREPROCESSOR_CONFIG_NAME
from gr00t_server.serving.limits import ServerLimits

from .gr00t_arguments import (_acting_clip_override, _resolve_device, checked_flag, tag_given_first,
                              unsupported_tag_message)
from .gr00t_observation_checks import Gr00tObservationChecks, _instruction
from .gr00t_options import Gr00tActionOptions, checked_options, denoising_cap
from .option_names import OptionNames

logger = logging.getLogger(__name__)

_POLICY_MODALITIES = ("video", "state", "action", "language")
# The backbone config's ids of the vision markers besides <|image_pad|> (config.json's image_token_id).
_VISION_TOKEN_ID_KEYS = {"<|vision_start|>": "vision_start_token_id", "<|vision_end|>": "vision_end_token_id",
                         "<|video_pad|>": "video_token_id"}
_fork_guard_lock = threading.Lock()
_fork_guard_registered = False
# Whether this process is a child of a fork (or of multiprocessing): its torch global RNG may be a copy of its parent's
# and its siblings', so its policies draw seedless noise from generators of their own (_own_seedless_generator)
_forked_child = multiprocessing.parent_process() is not None


def _torch_after_fork() -> None:
    """In a forked child: GNU OpenMP's threads do not survive fork, and a parallel torch op waits on them for ever.
    torch's global RNG is not touched here: a parent thread drawing from it at the fork leaves its lock held in the
    child, and reseeding it (torch.seed()) hung every such child; policies' seedless noise there comes from generators
    of their own (Gr00tPolicy._renew_locks for those made before the fork, __init__ for those made in the child)."""
    global _forked_child
    _forked_child = True
    torch.set_num_threads(1)
    logger.debug("forked child %d: torch now runs on one CPU thread", os.getpid())


def _own_seedless_generator() -> torch.Generator:
    """A generator for a forked child's seedless noise, seeded from the OS: with the parent's global RNG state every
    worker of a fork pool drew the same "random" action (the global one's lock may also be held there)."""
    return torch.Generator("cpu").manual_seed(int.from_bytes(os.urandom(8), "little"))


def _guard_torch_in_forked_children() -> None:
    """Register _torch_after_fork once per process (at import: a parent that ran torch before any policy was made
    forks children that make their own)."""
    global _fork_guard_registered
    with _fork_guard_lock:
        if not _fork_guard_registered and hasattr(os, "register_at_fork"):  # Windows has no fork
            os.register_at_fork(after_in_child=_torch_after_fork)
            _fork_guard_registered = True


_guard_torch_in_forked_children()


def _vision_marker_id_source(backbone: Optional[Dict[str, Any]], token: str, key: str, expected_id: int,
                             token_id: int) -> str:
    """Where the model's id of vision marker `token` comes from, and what to fix: config.json's value, or the built-in
    default (Cosmos-Reason2's, transformers' Qwen3VLConfig's too) where config.json sets none (no key to look for)."""
    if key == "image_token_id" or (backbone and key in backbone):
        shown = key if key == "image_token_id" else f"backbone_cfg.{key}"
        return f"config.json {shown} is {expected_id}; the tokenizer files do not belong to this model"
    if not backbone:  # the model is built from the whole built-in config then
        return (f"the model uses the default {token} id {expected_id} (config.json sets no backbone_cfg, so the "
                "built-in Cosmos-Reason2 config's); use this model's tokenizer files")
    return (f"the model uses the default {token} id {expected_id} (config.json's backbone_cfg sets no {key}); set "
            f"backbone_cfg.{key} to {token_id} in config.json if this tokenizer belongs to the model, else use the "
            "model's tokenizer files")


def _named_files_sha256(files: Dict[str, Path], names: Tuple[str, ...]) -> Any:
    """A sha256 of the name and bytes of each of `names` in `files` (the processor's source_files) there is."""
    digest = hashlib.sha256()
    for name in names:
        if name in files:
            digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest


class Gr00tPolicy(Gr00tObservationChecks, Gr00tActionOptions, BasePolicy):
    """A GR00T N1.7 checkpoint (local folder or hub id) serving one embodiment.

    `Gr00tPolicy(model_path, embodiment_tag, device="cuda", strict=True, dtype=None)`; keywords in any order, and the
    reference's positional order (embodiment_tag, model_path) when the tag is an EmbodimentTag or the path a folder.
    `clip_outliers`: None keeps the checkpoint's processor setting, for states (actions decode as the reference
    does: a mean/std absolute key is not clipped, whatever the checkpoint says); True clips normalized states to
    [-1, 1] and every decoded absolute action key to its statistics range; False leaves states unclipped.
    `preprocess_device`: where frames are patchified (default: the model's device if a GPU).
    What one call may cost (`gr00t-server serve` passes its flags): `max_rows` rows of 16:9 frames' vision tokens in
    all, a letter-boxed square of at most `max_image_pixels`, and `max_denoising_steps` (default 4x the checkpoint's
    num_inference_timesteps) in options["denoising_steps"].
    `allow_empty_instruction`: serve instructions that are empty once formalized ("", blanks, punctuation) for any
    embodiment, as for a fine-tune trained on episodes without task text (default: refused, but for DROID's tag).
    """

    supports_batching = True
    row_wise_checks = True  # the per-call vision token budget is enforced again by processing (transform_video_batch)
    observation_format = "nested"  # reported by get_server_info
    per_row_info_keys: frozenset[str] = frozenset()  # its info is {}: a batched call has nothing to split per row

    def __init__(
        self,
        model_path: Union[str, Path, EmbodimentTag, None] = None,
        embodiment_tag: Union[str, EmbodimentTag, Path, None] = None,
        device: Union[str, torch.device] = "cuda",
        strict: bool = True,
        dtype: Union[str, torch.dtype, None] = None,
        *,
        subfolder: Optional[str] = None,
        local_files_only: bool = False,
        clip_outliers: Optional[bool] = None,
        preprocess_device: Union[str, torch.device, None] = None,
        max_rows: int = ServerLimits.max_rows,
        max_image_pixels: int = ServerLimits.max_image_pixels,
        max_denoising_steps: Optional[int] = None,
        allow_empty_instruction: bool = False,
    ) -> None:
        super().__init__(strict=checked_flag("strict", strict))
        clip_outliers = checked_flag("clip_outliers", clip_outliers, none_allowed=True)
        self.allow_empty_instruction = checked_flag("allow_empty_instruction", allow_empty_instruction)
        self._timing = threading.local()
        self._checked_states = threading.local()  # what check_observation normalized, for this thread's next call
        self._option_names = OptionNames(logger)  # unknown option names: refused when strict, else warned once
        # None: torch's global RNG (torch.manual_seed applies); in a forked child, one of its own
        self._seedless_generator: Optional[torch.Generator] = _own_seedless_generator() if _forked_child else None
        if tag_given_first(model_path, embodiment_tag, subfolder):  # positional (embodiment_tag, model_path) like the reference
            model_path, embodiment_tag = embodiment_tag, model_path
        if model_path is None or embodiment_tag is None:
            raise ValueError("Gr00tPolicy needs both model_path and embodiment_tag")
        # The folder as given, for messages; every file is read through the folder it is now, once resolved: each
        # read followed a `latest` link re-pointed during the load, and served one checkpoint's statistics with
        # another's weights. A file rewritten in place meanwhile is refused at the end (refuse_changed_files).
        self.checkpoint_dir = resolve_checkpoint_dir(model_path, subfolder=subfolder, local_files_only=local_files_only)
        directory = self.checkpoint_dir.resolve()
        read_files = checkpoint_file_identities(directory)
        # from config.json alone: a bad cap is refused before the weights load (minutes for the 3B model), not after
        self.max_denoising_steps = denoising_cap(Gr00tN1d7Config.from_json_file(directory / CONFIG_NAME),
                                                 max_denoising_steps)
        processor_config = load_processor_config(directory)
        supported = processor_config.embodiment_tags
        tag_obj, tag_value = resolve_tag(embodiment_tag, supported)
        if tag_value not in supported:
            raise ValueError(unsupported_tag_message(tag_obj, supported))
        self.embodiment_tag = tag_obj
        self.embodiment_tag_value = tag_value
        self.device = _resolve_device(device)

        self.preprocess_device = (
            _resolve_device(preprocess_device, "preprocess_device") if preprocess_device is not None
            else self.device if self.device.type == "cuda" else torch.device("cpu")
        )
        self.processor = Gr00tN1d7Processor.from_pretrained(directory, local_files_only=local_files_only,
                                                            embodiment_tag=tag_value)
        limits = ServerLimits(max_rows=max_rows, max_image_pixels=max_image_pixels)  # ValueError naming a bad one
        self.processor.max_rows, self.processor.max_image_pixels = limits.max_rows, limits.max_image_pixels
        # count_language_tokens' own tokenizer, made now: made on the first long prompt, it held the socket thread
        # (pings, info) for as long as a copy of the real tokenizer takes to build.
        self._counting_tokenizer = _independent_tokenizer(self.processor.tokenizer)
        self._counting_lock = threading.Lock()
        # One forward pass at a time: concurrent callers (a user's thread pool, one policy behind two servers) queue
        # here. On the CPU each calling thread brought its own OpenMP team onto the same cores (four callers on two
        # cores once spun for 25 minutes without finishing); on a GPU the calls queued on one stream anyway.
        self._model_lock = threading.Lock()
        # On the CPU a whole call takes the lock, preprocessing included: its torch resizes and patchify also ran one
        # OpenMP team per calling thread, and with the model alone queued four callers still sat in the suite until
        # CI's 90-minute limit. The cores are the CPU's whichever call uses them: queueing costs no throughput. A GPU
        # policy keeps preprocessing (CPU work) of one call beside another's forward pass.
        self._whole_call_queued = self.device.type == "cpu" and self.preprocess_device.type == "cpu"
        renew_locks_after_fork(self)  # a forked child's calls wait on no lock a parent thread held at the fork
        checkpoint_clips_states = self.processor.config.clip_outliers
        if clip_outliers is not None:
            self.processor.config = dataclasses.replace(self.processor.config, clip_outliers=bool(clip_outliers))
        self.clip_actions_to_statistics = bool(clip_outliers)
        self._clip_override = _acting_clip_override(clip_outliers, checkpoint_clips_states)
        all_configs = self.processor.modality_configs(tag_value)
        # The processor's own objects, read on the request path; the public modality_configs hands out copies.
        self._modality_configs: Dict[str, ModalityConfig] = {k: v for k, v in all_configs.items() if k != "rl_info"}
        missing = [m for m in _POLICY_MODALITIES if m not in self._modality_configs]
        if missing:
            raise ValueError(f"checkpoint modality configs for {tag_value!r} lack {missing}")
        language = self._modality_configs["language"]
        if len(language.delta_indices) != 1:
            raise ValueError(f"Only one language delta index is supported; {tag_value!r} has {language.delta_indices}")
        self.language_key = language.modality_keys[0]
        self.processor.norm_params(tag_value)  # fail at load time, not at the first request, on bad statistics
        self.embodiment_id = self.processor.embodiment_id(tag_value)

        # read_files: checked once, below, after the files read after the model too
        self.model, self.model_config = load_model(directory, device=self.device, dtype=dtype, read_files=read_files)
        self.model.eval()
        self._model_dtype = next(self.model.parameters()).dtype  # read now: a backend may swap every sub-module out
        if self._model_dtype == torch.float16:
            self.processor.model_float = "float16"
        self.inference_mode = "pytorch"  # apply_inference_mode names the backend it swaps in
        self._check_model_matches_processor()
        self._identity: Optional[Dict[str, Any]] = None
        self._file_hashes = self._loaded_file_hashes()  # read before the check below: the files that were loaded
        refuse_changed_files(read_files, self.checkpoint_dir)
        self.identity()  # now, at load: get_server_info answers it on the socket thread, which must not wait

    def _check_model_matches_processor(self) -> None:
        pc, mc = self.processor.config, self.model_config
        if pc.strict_action_padding_mask != mc.strict_action_padding_mask:
            raise RuntimeError(
                "Model and processor disagree on strict_action_padding_mask: "
                f"model={mc.strict_action_padding_mask}, processor={pc.strict_action_padding_mask}"
            )
        for key in ("max_state_dim", "max_action_dim"):
            if getattr(pc, key) != getattr(mc, key):
                # an absent key's default (the reference's 29) fails the reference too, at its first call
                hint = (f"; set {key} to {getattr(mc, key)} in processor_config.json's processor_kwargs if the two "
                        "files belong to the same checkpoint") if key in pc.absent_keys else ""
                raise ValueError(f"processor {key} {getattr(pc, key)}{pc.absent_note(key)} != model {key} "
                                 f"{getattr(mc, key)}{hint}")
        if pc.max_action_horizon != mc.action_horizon:
            # Training pads action targets to max_action_horizon (model.md §5); the reference ties the two nowhere, so
            # a fine-tune may differ, but another checkpoint's config.json denoises another number of action tokens.
            logger.warning(
                "%s has action_horizon %d, but %s has max_action_horizon %d%s (the horizon training padded actions "
                "to): the model denoises %d action tokens; check that the two files belong to the same checkpoint",
                self.checkpoint_dir / CONFIG_NAME, mc.action_horizon,
                self.processor.source_files.get(PROCESSOR_CONFIG_NAME, PROCESSOR_CONFIG_NAME), pc.max_action_horizon,
                pc.absent_note("max_action_horizon"), mc.action_horizon,
            )
        if pc.strict_action_padding_mask:
            logger.warning("strict_action_padding_mask=true is not implemented; actions are sampled without the mask")
        if not 0 <= self.embodiment_id < mc.max_num_embodiments:
            raise ValueError(
                f"embodiment {self.embodiment_tag_value!r} has projector index {self.embodiment_id}, outside "
                f"[0, {mc.max_num_embodiments}) of the model's max_num_embodiments"
            )
        frames = len(self._modality_configs["state"].delta_indices)
        if frames != mc.state_history_length:  # the state encoder takes exactly state_history_length frames
            raise ValueError(
                f"processor_config.json: modality_configs[{self.embodiment_tag_value!r}]['state']['delta_indices'] has "
                f"{frames} frames; expected config.json's state_history_length {mc.state_history_length}"
            )
        horizon = self._modality_configs["action"].horizon
        if horizon > mc.action_horizon:
            raise ValueError(
                f"embodiment {self.embodiment_tag_value!r} has action horizon {horizon}, more than the model's "
                f"action_horizon {mc.action_horizon}"
            )
        self._check_image_patches_match_vision_encoder()
        # Qwen3-VL finds images by vision_start_token_id (their M-RoPE positions) and embeds each marker by its id:
        # a tokenizer of another model with other ids loaded without a word and changed the action.
        expected = {IMAGE_PAD_TOKEN: (mc.image_token_id, "image_token_id")}
        for token, key in _VISION_TOKEN_ID_KEYS.items():
            expected[token] = ((mc.backbone_cfg or {}).get(key, COSMOS_REASON2_2B_CONFIG[key]), key)
        for token, (expected_id, key) in expected.items():
            token_id = self.processor.tokenizer.convert_tokens_to_ids(token)
            if token_id != expected_id:
                raise ValueError(f"tokenizer maps {token} to id {token_id}, but "
                                 + _vision_marker_id_source(mc.backbone_cfg, token, key, expected_id, token_id))

    def _check_image_patches_match_vision_encoder(self) -> None:
        """preprocessor_config.json cuts images into the patches the backbone's vision encoder was built for; a
        mismatch failed every request with a tensor-size error."""
        vision = getattr(getattr(getattr(getattr(self.model, "backbone", None), "model", None), "config", None), "vision_config", None)
        if vision is None:  # a backend without the torch backbone (its export was checked against the same files)
            return
        patches = self.processor.vision_config
        pairs = (("patch_size", "patch_size"), ("temporal_patch_size", "temporal_patch_size"), ("merge_size", "spatial_merge_size"))
        for ours, theirs in pairs:
            expected = getattr(vision, theirs, None)
            if expected is not None and getattr(patches, ours) != expected:
                raise ValueError(
                    f"preprocessor_config.json: {ours} is {getattr(patches, ours)}, but the backbone's vision encoder "
                    f"(config.json) has {theirs} {expected}; the image processor files do not belong to this model"
                )

    # --- BasePolicy -------------------------------------------------------------------------------

    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        """{video, state, action, language} modality configs of the selected embodiment (no rl_info): the caller's own
        copies, which it may edit without changing the policy."""
        return copy_modality_configs(self._modality_configs)

    @property
    def modality_configs(self) -> Dict[str, ModalityConfig]:
        """The selected embodiment's modality configs (get_modality_config): copies, so that a caller's edit (sorting
        the action keys in place) cannot change which columns each key's actions come from."""
        return copy_modality_configs(self._modality_configs)

    @modality_configs.setter
    def modality_configs(self, configs: Dict[str, ModalityConfig]) -> None:
        """Assigned as the reference's plain attribute was (a subclass's own, say): taken when it equals the checkpoint's
        (kept as copies); other configs are refused, since the language key, horizons and the processor's decoding
        were worked out from the checkpoint's when the policy loaded (a new language key failed every call)."""
        given = {name: config for name, config in dict(configs).items() if name != "rl_info"}
        if given != self._modality_configs:
            changed = sorted(name for name in {*given, *self._modality_configs}
                             if given.get(name) != self._modality_configs.get(name))
            raise ValueError(f"modality_configs {changed} differ from the checkpoint's: Gr00tPolicy reads them from its "
                             f"{PROCESSOR_CONFIG_NAME} when it loads; edit that file (or serve another checkpoint) to "
                             "change them")
        self._modality_configs = copy_modality_configs(given)

    def identity(self) -> Dict[str, Any]:
        """Which model this is, the same wherever its checkpoint is copied and whether loaded in fp32 or bf16 (a
        float16 model's weights round otherwise, and it reads as another model): the hash of its config and a
        fingerprint of its weights (as ONNX exports record them), and a hash of the processor files that turn its
        outputs into actions (processor_config.json, statistics.json, embodiment_id.json: a checkpoint with the same
        weights and other statistics or projector indices acts otherwise), one of its image processor settings, one of
        its tokenizer and chat template (another prompt, other actions), and `clip_outliers` when a serve-time
        override makes it clip otherwise than its files say (left out by default, as older servers reported it);
        get_server_info reports it so that an evaluation can tell one checkpoint's results from another's. Computed
        once."""
        if self._identity is None:
            from gr00t_server.backends.common import model_identity

            self._identity = {"kind": "gr00t", **model_identity(self.model), **self._file_hashes}
            if self._clip_override is not None:
                self._identity["clip_outliers"] = self._clip_override
        return dict(self._identity)

    def _loaded_file_hashes(self) -> Dict[str, str]:
        """identity()'s processor_sha256, preprocessor_sha256 (where there is one) and tokenizer_sha256, taken at load
        (before refuse_changed_files): hashed when identity() was first asked, they named files copied in since."""
        files = self.processor.source_files
        hashes = {"processor_sha256": _named_files_sha256(files, (PROCESSOR_CONFIG_NAME, STATISTICS_NAME,
                                                                  EMBODIMENT_ID_NAME)).hexdigest()[:16]}
        if PREPROCESSOR_CONFIG_NAME in files:
            image_settings = files[PREPROCESSOR_CONFIG_NAME].read_bytes()
            hashes["preprocessor_sha256"] = hashlib.sha256(image_settings).hexdigest()[:16]
        # the tokenizer files read and the chat template the prompts are rendered with: either changes the tokens the
        # model reads for the same instruction
        digest = _named_files_sha256(files, TOKENIZER_FILE_NAMES)
        template = getattr(self.processor.tokenizer, "chat_template", None) or ""
        digest.update(b"chat_template\0" + str(template).encode())
        hashes["tokenizer_sha256"] = digest.hexdigest()[:16]
        return hashes

    def work_limits(self) -> Dict[str, int]:
        """What one call may cost, as get_server_info reports it beside the server's limits."""
        return {"max_denoising_steps": self.max_denoising_steps,
                "max_vision_tokens": self.processor.max_vision_tokens(self.embodiment_tag_value)}

    def runtime(self) -> Dict[str, str]:
        """What computes the actions, as get_server_info reports it beside policy_identity (which leaves it out: the
        same weights in bf16 or by ONNX Runtime round the same policy's actions otherwise): dtype, device and backend."""
        return {"dtype": str(self._model_dtype).replace("torch.", ""), "device": str(self.device),
                "inference_mode": self.inference_mode}

    def dims(self) -> Dict[str, Dict[str, int]]:
        """Each state key's and action key's last-axis width D, from the checkpoint statistics (the widths its
        observation checks expect and its actions have), as get_server_info reports them."""
        params = self.processor.norm_params(self.embodiment_tag_value)
        return {"state": {key: key_params.dim for key, key_params in params.state.items()},
                "action": {key: key_params.dim for key, key_params in params.action.items()}}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Stateless policy: nothing to reset."""
        return {}

    def count_language_tokens(self, text: str) -> int:
        """Tokens of `text` by this checkpoint's tokenizer, for the server's --max-language-tokens (a count of words
        let 2,048 digits or CJK characters through as one word: thousands of tokens). Counted as the model reads it,
        formalized when the processor formalizes language (the raw text's punctuation and case counted 600 tokens for
        241 read). Safe from the socket thread while the worker tokenizes: it uses its own copy of the tokenizer.
        ObservationError for a lone surrogate the tokenizer would get (formalize_language off)."""
        text = self.processor.instruction_text(text)
        refuse_lone_surrogate(text, "the instruction")
        with self._counting_lock:
            return self._counting_tokenizer(text)

    def unread_state_keys(self) -> FrozenSet[str]:
        """The state keys whose values the model never reads (its exclude_state): held to their width alone, so a
        NaN placeholder there is served as upstream serves it. Wrappers (the sim wrapper) ask this too."""
        return self.processor.unread_state_keys(self.embodiment_tag_value)

    def check_observation(self, observation: Dict[str, Any]) -> None:
        """The modality configs' checks, then what processing or an exported ViT would refuse inside the call (frame
        sizes, states that normalize beyond the model's float or have the wrong width), the reference states of
        relative action keys (a degenerate rotation failed only after the whole model ran, and with batching on made
        every client's batch re-run alone), then the instructions (no special tokens). All in the observation's own
        row numbering."""
        # BasePolicy's check, but a state key the model never reads (exclude_state) may hold NaN, as upstream serves it
        validate_observation(observation, self.get_modality_config(), unread_state_keys=self.unread_state_keys())
        self.processor.check_video(self.embodiment_tag_value, observation["video"])
        self._check_exported_image_grid(observation["video"])
        self._normalize_checked_states(observation["state"])
        self._check_reference_states(observation)
        self._check_instructions(observation)

    def _normalize_checked_states(self, states: Dict[str, Any]) -> None:
        """normalize_state's refusals (a wrong width, a value beyond the model's float), keeping its result for the
        call that follows on this thread, which then does not normalize the same arrays again."""
        keys = self._modality_configs["state"].modality_keys
        normalized = self.processor.normalize_state(self.embodiment_tag_value, states)
        self._checked_states.last = ([states[key] for key in keys], normalized)

    def _take_checked_states(self, raw_states: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
        """The states check_observation last normalized on this thread when `raw_states` are those very arrays and
        this call is strict (so that its check ran on them just before), else None; taken once."""
        arrays, normalized = getattr(self._checked_states, "last", ((), None))
        self._checked_states.last = ((), None)
        same = len(arrays) == len(raw_states) and all(a is b for a, b in zip(arrays, raw_states.values()))
        return normalized if self.strict and same else None

    def _renew_locks(self) -> None:
        """In a forked child (fork_locks): fresh locks. The per-thread _timing and _checked_states need nothing: the
        forking thread keeps its own, and the parent's other threads do not exist there."""
        self._counting_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._seedless_generator = _own_seedless_generator()

    @property
    def last_timing(self) -> Dict[str, float]:
        """{"preprocess_ms", "model_ms", "postprocess_ms"} of this thread's last get_action ({} before one)."""
        return dict(getattr(self._timing, "stages", {}))

    def _get_action(
        self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        if self._whole_call_queued:  # a wait here (another thread's call) is in no stage
            with self._model_lock:
                return self._get_action_now(observation, options, model_lock=contextlib.nullcontext())
        return self._get_action_now(observation, options, model_lock=self._model_lock)

    def _get_action_now(
        self, observation: Dict[str, Any], options: Optional[Dict[str, Any]], model_lock: Any
    ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        started = time.perf_counter()
        options = checked_options(options)
        if not self.strict:  # a strict policy's check_observation made these checks, and more
            self._check_lenient_layout(observation)
        batch_size = self._batch_size(observation)
        if batch_size < 1:
            raise ObservationError(
                "observation has 0 rows (a batch of size 0); every video and state array needs at least one row on "
                "its first axis"
            )
        if not self.strict:  # a strict policy's check_observation made these checks
            self._check_batch_sizes(observation, batch_size)
            self._check_exported_image_grid(observation["video"], frames_checked=False)
            self._check_reference_states(observation)
            self._check_instructions(observation)
        rtc = self._parse_rtc(options.get("rtc"), batch_size)
        # the options' names, seed, noise and steps are refused before the observation is preprocessed, not after
        noise, generator = self._initial_noise(options, batch_size)
        num_steps = self._denoising_steps(options.get("denoising_steps"))
        video = {k: np.asarray(observation["video"][k]) for k in self._modality_configs["video"].modality_keys}
        raw_states = {k: np.asarray(observation["state"][k]) for k in self._modality_configs["state"].modality_keys}
        languages = [_instruction(text, self.language_key, row)
                     for row, text in enumerate(observation["language"][self.language_key])]
        inputs = self.processor.process_batch(
            self.embodiment_tag_value, video, raw_states, languages, device=self.preprocess_device,
            normalized_state=self._take_checked_states(raw_states),
        )
        rtc_arguments = self._rtc_model_arguments(rtc, raw_states) if rtc is not None else {}
        preprocessed = time.perf_counter()
        with model_lock:  # a wait here (another thread's call) is in no stage
            model_started = time.perf_counter()
            with torch.inference_mode():
                output = self.model.get_action(inputs, noise=noise, generator=generator, num_steps=num_steps,
                                               **rtc_arguments)
            action_pred = output["action_pred"].float().cpu().numpy()  # waits for the GPU: model_ms is its real time
            post_started = time.perf_counter()
        # the start rows as the model received them, in its compute dtype: a bf16 frozen row comes back bf16-rounded
        inpainted = (rtc_arguments["previous"][:, : rtc_arguments["rtc_overlap_steps"]]
                     .to(output["action_pred"].dtype).float().numpy() if rtc_arguments else None)
        action = self.processor.decode_action(
            action_pred, self.embodiment_tag_value, raw_states, clip_to_statistics=self.clip_actions_to_statistics,
            inpainted=inpainted,
        )
        result = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in action.items()}
        finished = time.perf_counter()
        self._timing.stages = {
            "preprocess_ms": (preprocessed - started) * 1000.0,
            "model_ms": (post_started - model_started) * 1000.0,
            "postprocess_ms": (finished - post_started) * 1000.0,
        }
        return result, {}


def _independent_tokenizer(tokenizer: Any) -> Callable[[str], int]:
    """A token counter that shares no state with `tokenizer` (a Rust fast tokenizer used from two threads at once
    fails with "Already borrowed"): a copy of its backend, or of the tokenizer itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(backend.to_str())
        copy.no_truncation()
        copy.no_padding()
        return lambda text: len(copy.encode(text, add_special_tokens=False).ids)
    import copy as copying

    own = copying.deepcopy(tokenizer)
    return lambda text: len(own(text, add_special_tokens=False)["input_ids"])
