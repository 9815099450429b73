"""Damaged checkpoints and hostile frames: refused at load (or before any work) with one line naming the file,
the field and the problem, never loaded into wrong answers, tracebacks or gigabytes."""

import json
import shutil

import numpy as np
import pytest

from gr00t_server.processing import processor as processor_module
from gr00t_server.processing.image import MAX_ASPECT_RATIO


@pytest.fixture
def copy_of(tiny_checkpoint, tmp_path):
    """A fresh copy of the session's tiny checkpoint, to damage."""
    def make():
        target = tmp_path / "ckpt"
        shutil.copytree(tiny_checkpoint, target)
        return target
    return make


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


def test_a_frame_at_the_aspect_ratio_limit_is_still_transformed(tiny_processor):
    key = tiny_processor.modality_configs("new_embodiment")["video"].modality_keys[0]
    frames = np.zeros((1, 1, 2, 2 * MAX_ASPECT_RATIO, 3), np.uint8)
    (out,) = tiny_processor.transform_video_batch("new_embodiment", {key: frames})
    assert out.shape[:2] == (1, 1)


def test_a_frame_without_pixels_is_refused_naming_the_camera(tiny_processor):
    key = tiny_processor.modality_configs("new_embodiment")["video"].modality_keys[0]
    with pytest.raises(ValueError, match=rf"Video key '{key}' has 0x0 images"):
        tiny_processor.transform_video_batch("new_embodiment", {key: np.zeros((1, 1, 0, 0, 3), np.uint8)})
