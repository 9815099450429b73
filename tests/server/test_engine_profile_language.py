"""TensorRT engine profiles hold the prompt of every instruction serve accepts (shown from the export's metadata:
no TensorRT here), and serve refuses a --max-language-tokens its engines cannot hold, naming both numbers."""

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("torch")

from gr00t_server.backends import BackendError, commands  # noqa: E402
from gr00t_server.backends.common import EXPORT_METADATA  # noqa: E402
from gr00t_server.backends import tensorrt_backend  # noqa: E402
from gr00t_server.backends.tensorrt_backend import profile_shapes  # noqa: E402
from gr00t_server.cli import build_parser  # noqa: E402
from gr00t_server.policies.gr00t_policy import Gr00tPolicy  # noqa: E402
from gr00t_server.serving.limits import ServerLimits  # noqa: E402
from gr00t_server.test_checkpoint import example_observation  # noqa: E402

TAG = "new_embodiment"
# The sub-models whose sequence axis is the prompt, and the input that carries it.
PROMPT_INPUTS = (("llm", "inputs_embeds"), ("vl_self_attention", "hidden_states"), ("dit", "vl_embs"))


def _export(checkpoint, out, *flags):
    args = build_parser().parse_args(["export", "--model-path", str(checkpoint), "--output", str(out), "--mode",
                                      "full_pipeline", "--precision", "fp32", "--embodiment-tag", TAG, "--device",
                                      "cpu", *flags])
    assert commands.run(args) == 0
    return json.loads((out / EXPORT_METADATA).read_text())


@pytest.fixture(scope="module")
def export_metadata(tiny_checkpoint, tmp_path_factory):
    """A full_pipeline fp32 export of the tiny checkpoint made by the `export` command with its defaults."""
    return _export(tiny_checkpoint, tmp_path_factory.mktemp("onnx_full"))


def _engine_metadata(export_metadata, max_batch_size=8):
    """What build-engine records of its profiles (without building them: no TensorRT here)."""
    batch = int(export_metadata.get("batch_size", 1))
    engines = {name: {"profile": {input_name: [list(s) for s in shape] for input_name, shape in
                                  profile_shapes(info["inputs"], batch, max_batch_size).items()}}
               for name, info in export_metadata["submodules"].items()}
    return {"max_batch_size": max_batch_size, "engines": engines, "export_metadata": export_metadata}


def test_engine_profiles_hold_the_prompt_of_an_instruction_of_max_language_tokens(tiny_checkpoint, export_metadata):
    """The profile's max was max(2x, x+64) of the export's one sample prompt (150 tokens here): a 512-token
    instruction, which serve accepts, made a 583-token prompt that TensorRT refused at run time."""
    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu")
    text = " ".join(["bowl"] * ServerLimits().max_language_tokens)
    assert policy.count_language_tokens(text) <= ServerLimits().max_language_tokens
    height, width = export_metadata["sample_image_size"]
    observation = example_observation(tiny_checkpoint, TAG, batch_size=1, image_size=(height, width))
    inputs = policy.processor.process_batch(TAG, {k: np.asarray(v) for k, v in observation["video"].items()},
                                            {k: np.asarray(v) for k, v in observation["state"].items()}, [text])
    longest = int(inputs["input_ids"].shape[1])
    batch = int(export_metadata["batch_size"])
    for name, prompt_input in PROMPT_INPUTS:
        shapes = profile_shapes(export_metadata["submodules"][name]["inputs"], batch, 8)
        assert shapes[prompt_input][2][1] >= longest, name


def test_serve_takes_the_max_language_tokens_the_engines_were_exported_for(export_metadata, tmp_path):
    limit = ServerLimits().max_language_tokens
    tensorrt_backend.check_engine_language_room(_engine_metadata(export_metadata), limit, tmp_path)


def test_serve_refuses_more_language_tokens_than_the_engines_hold_naming_both_numbers(export_metadata, tmp_path):
    limit = ServerLimits().max_language_tokens
    with pytest.raises(BackendError, match=rf"--max-language-tokens {limit + 1} is more than the {limit} language "
                                           r"tokens the TensorRT engines .* take"):
        tensorrt_backend.check_engine_language_room(_engine_metadata(export_metadata), limit + 1, tmp_path)


def test_engines_of_an_older_export_are_refused_at_serve_naming_the_tokens_they_hold(export_metadata, tmp_path):
    """An export without the language room: its profile holds its sample prompt's tokens more, or 64."""
    older = json.loads(json.dumps(export_metadata))
    for info in older["submodules"].values():
        for value in info["inputs"].values():
            value.pop("profile_max", None)
    room = max(older["llm_seq_len"], 64)
    with pytest.raises(BackendError, match=rf"--max-language-tokens 512 is more than the {room} language tokens .*"
                                           rf"serve with --max-language-tokens {room}"):
        tensorrt_backend.check_engine_language_room(_engine_metadata(older), 512, tmp_path)


def test_export_takes_max_language_tokens_for_the_engines_of_a_server_that_accepts_more(tiny_checkpoint, tmp_path):
    metadata = _export(tiny_checkpoint, tmp_path / "onnx", "--max-language-tokens", "1024")
    assert metadata["max_language_tokens"] == 1024
    tensorrt_backend.check_engine_language_room(_engine_metadata(metadata), 1024, tmp_path)
