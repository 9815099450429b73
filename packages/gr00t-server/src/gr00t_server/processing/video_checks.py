"""Request-time video checks of Gr00tN1d7Processor: from shapes alone, before any resize, refuse video the image
transform cannot take, and video whose frames together make more vision tokens than the per-request budget."""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from gr00t_client.modality import ModalityConfig
from gr00t_client.policy import ObservationError, float_frames_hint

from .config import ProcessorConfig
from .image import check_frame_size, eval_transform_shape, torchvision_style_transform_shape
from .vision_patches import VisionPatchConfig, num_image_tokens, smart_resize

logger = logging.getLogger(__name__)

_SQUARE_SIDE = 256  # any side would do: every transform scales a square frame to the checkpoint's own size
# The widest common camera frame (16:9): the budget's rows are of frames up to this wide, so that --max-rows rows of 4:3
# or 16:9 camera frames fit (a budget of square frames refused them, and a batching server's merged calls of them),
# while thin frames (a 1x16 frame makes 16 square frames' tokens) still do not.
_WIDEST_CAMERA_FRAME = (720, 1280)
# The largest count get_server_info can report (serving.limits.MAX_LIMIT, msgpack's signed 64 bits): a budget derived
# from a max_rows near it is saturated here, or every get_server_info failed and clients took the server for another.
_REPORTABLE_MAX = 2**63 - 1


class VideoChecks:
    """Gr00tN1d7Processor's video and vision-token checks: mixed into it, whose config, vision config and limits it reads."""

    config: ProcessorConfig
    vision_config: VisionPatchConfig
    max_image_pixels: int
    max_rows: Optional[int]
    modality_configs: Callable[[str], Dict[str, ModalityConfig]]
    _warned: Dict[str, Set[Tuple[str, str]]]  # {"video": (tag, camera) warned about}

    def check_video(self, tag: str, video: Mapping[str, np.ndarray]) -> None:
        """Refuse, from shapes alone, video the transform cannot take: a missing view, a layout other than uint8
        (B, T, H, W, 3), views of different (B, T), a frame size the image processor refuses."""
        video_config = self.modality_configs(tag)["video"]
        horizon = None
        sizes: List[Tuple[str, int, int, int]] = []  # (key, frames, height, width)
        for key in video_config.modality_keys:
            if key not in video:
                raise KeyError(f"Video key '{key}' not found in observation for embodiment '{tag}'")
            frames = np.asarray(video[key])
            if frames.ndim != 5:
                raise ObservationError(f"Video key '{key}' must be (B, T, H, W, 3) here, got shape {frames.shape}")
            if frames.dtype != np.uint8 or frames.shape[-1] != 3:  # named as sent, before a size check misreads it
                hint = (" (channels first? send channels last, e.g. frames.transpose(0, 1, 3, 4, 2))"
                        if frames.shape[2] == 3 and frames.shape[-1] != 3 else
                        float_frames_hint(frames) if frames.dtype.kind == "f"
                        else "")
                raise ObservationError(f"Video key '{key}' must be uint8 (B, T, H, W, 3) with values 0-255; got "
                                       f"{frames.dtype} {frames.shape}{hint}")
            if horizon is None:
                horizon = frames.shape[:2]
            elif frames.shape[:2] != horizon:
                raise ObservationError(f"Video key '{key}' has (B, T) = {frames.shape[:2]}; other views have {horizon}")
            # Before any resize: a thin frame would be scaled up to gigabytes (shape only, cheap).
            check_frame_size(frames.shape[2], frames.shape[3], self.config.letter_box_transform, f"Video key '{key}'",
                             self._scaled_shortest_edge(), self.max_image_pixels)
            sizes.append((key, frames.shape[0] * frames.shape[1], frames.shape[2], frames.shape[3]))
            self._warn_float_cast_frames(tag, key, frames)
        self._check_vision_tokens(tag, sizes)

    def _warn_float_cast_frames(self, tag: str, key: str, frames: np.ndarray) -> None:
        """Warn once per camera when its uint8 frames hold only 0 and 1: float frames in [0, 1] cast with
        astype(np.uint8), a black image to the model (served: a truly dark frame is legal). No copy; every pixel is
        read only where a sample of them holds nothing above 1."""
        if (tag, key) in self._warned["video"] or not frames.size or frames[..., ::8, ::8, :].max() > 1:
            return  # a sample of pixels first: a real camera's frames are ruled out without reading them all
        if frames.max() > 1:
            return
        self._warned["video"].add((tag, key))
        logger.warning("Video key '%s' of '%s' has uint8 frames holding only 0 and 1 (max %d): float frames in [0, 1] "
                       "cast with astype(np.uint8)? The model sees a black image; send (frames * 255).round().clip(0, "
                       "255).astype(np.uint8) (if the camera is truly dark, ignore this; warned once per camera)",
                       key, tag, int(frames.max()))

    def frame_tokens(self, height: int, width: int) -> int:
        """Vision tokens one (height, width) frame becomes (eval transform, then image patches), from its shape alone."""
        return num_image_tokens(self.frame_grid(height, width), self.vision_config.merge_size)

    def frame_grid(self, height: int, width: int) -> List[int]:
        """The image grid (t, h, w in patches) one (height, width) frame becomes (eval transform, then image patches),
        from its shape alone."""
        cfg, vision = self.config, self.vision_config
        if cfg.use_albumentations:
            size = eval_transform_shape(height, width, cfg.shortest_image_edge, cfg.resolved_crop_fraction,
                                        cfg.letter_box_transform, cfg.image_target_size)
        else:
            size = torchvision_style_transform_shape(cfg.image_target_size, cfg.image_crop_size)
        new_h, new_w = smart_resize(size[0], size[1], vision.factor, vision.min_pixels, vision.max_pixels)
        return [1, new_h // vision.patch_size, new_w // vision.patch_size]

    def max_vision_tokens(self, tag: str) -> Optional[int]:
        """The vision tokens one call may make: those of `max_rows` rows of 16:9 frames (or square ones, when those make
        more), every camera and time step of `tag`, at most 2**63 - 1 (what get_server_info can report); None without
        `max_rows`."""
        if self.max_rows is None:
            return None
        video = self.modality_configs(tag)["video"]
        frame = max(self.frame_tokens(_SQUARE_SIDE, _SQUARE_SIDE), self.frame_tokens(*_WIDEST_CAMERA_FRAME))
        return min(self.max_rows * len(video.modality_keys) * len(video.delta_indices) * frame, _REPORTABLE_MAX)

    def max_rows_like(self, tag: str, video: Mapping[str, object]) -> Optional[int]:
        """The most rows of frames shaped like those of `video` ({key: (B, T, H, W, 3) array}) one call may hold
        within max_vision_tokens, from shapes alone; None without a budget, or for video not in that layout."""
        budget = self.max_vision_tokens(tag)
        if budget is None:
            return None
        row_tokens = 0
        for key in self.modality_configs(tag)["video"].modality_keys:
            frames = video.get(key)
            if not isinstance(frames, np.ndarray) or frames.ndim != 5 or min(frames.shape[2:4]) < 1:
                return None
            try:  # a frame the model refuses (an aspect ratio past its limit): its request is refused by the checks
                row_tokens += frames.shape[1] * self.frame_tokens(frames.shape[2], frames.shape[3])
            except ValueError:
                return None
        return budget // row_tokens if row_tokens else None

    def _check_vision_tokens(self, tag: str, sizes: Sequence[Tuple[str, int, int, int]]) -> None:
        """Refuse video whose frames together make more vision tokens than max_vision_tokens: thin frames, each
        within the aspect ratio limit, made 16x a square frame's tokens (128 rows of 1x16: 20 s and 4 GiB)."""
        budget = self.max_vision_tokens(tag)
        if budget is None:
            return
        counted = [(key, frames, height, width, self.frame_tokens(height, width)) for key, frames, height, width in sizes]
        total = sum(frames * tokens for _, frames, _, _, tokens in counted)
        if total > budget:
            detail = "; ".join(f"'{key}': {frames} frames of {height}x{width}, {tokens} tokens each"
                               for key, frames, height, width, tokens in counted)
            raise ObservationError(
                f"observation's video makes {total} vision tokens ({detail}); this policy accepts at most {budget} "
                f"vision tokens per request, what {self.max_rows} rows (--max-rows, max_rows in Python) of 16:9 frames "
                "make; send fewer rows, or frames closer to square"
            )

    def _scaled_shortest_edge(self) -> Optional[int]:
        """The side a frame's shortest side is scaled to, keeping its aspect ratio (None: resized to a fixed size)."""
        cfg = self.config
        if cfg.use_albumentations:
            return cfg.shortest_image_edge
        return cfg.image_target_size if isinstance(cfg.image_target_size, int) else None
