"""A model whose raw output holds inf (an inf weight, a float16 overflow) is refused, not unnormalized into a plausible
action: min/max unnormalization clips to [-1, 1] first, so an inf became exactly the statistics' q99 and passed every
later finiteness check (warm-up too, with one denoising step). Real tiny checkpoints with damaged weights (an inf set
in memory after loading: the loader refuses one in a file), loaded
through the same code as a user's, and a real PolicyServer on loopback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gr00t_client import PolicyClient, PolicyServerError
from gr00t_client.policy import NonFiniteActionError
from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.processing import Gr00tN1d7Processor
from gr00t_server.test_checkpoint import example_observation
from serving import running_server

TAG = "libero_sim"
DECODER_BIAS = "action_head.action_decoder.layer2.b"  # (embodiments, max_action_dim): column 0 is action key 'x'
DECODER_WEIGHT = "action_head.action_decoder.layer2.W"  # (embodiments, hidden, max_action_dim)


def damaged(copy_of, value: float, steps: int):
    """A copy of the tiny checkpoint whose action decoder adds `value` to action column 0 of TAG, at `steps` steps."""
    checkpoint = copy_of()
    embodiment = Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True).embodiment_id(TAG)
    weights = load_file(checkpoint / "model.safetensors")
    weights[DECODER_BIAS][embodiment, 0] = value
    save_file(weights, checkpoint / "model.safetensors")
    config = json.loads((checkpoint / "config.json").read_text())
    config["num_inference_timesteps"] = steps
    (checkpoint / "config.json").write_text(json.dumps(config))
    return checkpoint


def with_inf_weight(policy):
    """`policy` with an inf in its action decoder's bias for TAG's action column 0, set in memory: the loader refuses
    a checkpoint file holding one."""
    from gr00t_server.backends.common import model_of

    with torch.no_grad():
        dict(model_of(policy).named_parameters())[DECODER_BIAS][policy.embodiment_id, 0] = float("inf")
    return policy


REFUSAL = (r"the model's output for action key 'x' of 'libero_sim' holds non-finite values \(NaN or inf\) in rows "
           r"\[0\], before unnormalization; the action was not sent")


def test_an_inf_from_the_model_is_refused_not_clipped_to_the_statistics_edge(copy_of):
    checkpoint = damaged(copy_of, 0.0, steps=1)
    policy = with_inf_weight(Gr00tPolicy(checkpoint, TAG, device="cpu"))
    with pytest.raises(NonFiniteActionError, match=REFUSAL):
        policy.get_action(example_observation(checkpoint, TAG), {"seed": 0})


def test_one_denoising_step_asked_of_a_four_step_model_with_an_inf_weight_is_refused_over_the_wire(copy_of):
    # Four steps turn the inf into NaN (refused before); one step, as open-loop --denoising-steps 1 asks, did not.
    checkpoint = damaged(copy_of, 0.0, steps=4)
    with running_server(with_inf_weight(Gr00tPolicy(checkpoint, TAG, device="cpu"))) as server:
        with PolicyClient(port=server.port, timeout_ms=30_000) as client:
            observation = example_observation(checkpoint, TAG)
            with pytest.raises(PolicyServerError, match=REFUSAL + r".*gr00t-server verify"):
                client.get_action(observation, {"denoising_steps": 1, "seed": 0})
            assert client.ping()  # the server answers on


def test_a_float16_overflow_of_the_model_output_is_refused(copy_of):
    # Weights within float16's range (one beyond it is refused at load) whose output for 'x' is not: 60000 plus
    # 60000 times the sum of the decoder's non-negative hidden units
    checkpoint = damaged(copy_of, 6e4, steps=1)
    embodiment = Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True).embodiment_id(TAG)
    weights = load_file(checkpoint / "model.safetensors")
    weights[DECODER_WEIGHT][embodiment, :, 0] = 6e4
    save_file(weights, checkpoint / "model.safetensors")
    observation = example_observation(checkpoint, TAG)
    with pytest.raises(NonFiniteActionError, match=r"action key 'x' of 'libero_sim' reaches \|values\| up to "):
        Gr00tPolicy(checkpoint, TAG, device="cpu").get_action(observation, {"seed": 0})
    with pytest.raises(NonFiniteActionError, match=REFUSAL + r".*in the dtype served: for a float16 model.*65504"):
        Gr00tPolicy(checkpoint, TAG, device="cpu", dtype="float16").get_action(observation, {"seed": 0})


def test_a_finite_but_absurd_model_output_is_refused_not_pinned_to_the_statistics_edge(copy_of):
    # A blown-up layer's 1e6, where training targets lie in about [-1, 1], was clipped to q99 at every step: a
    # constant, plausible chunk. Refused like an inf, with the same error (batching isolates its rows alike).
    checkpoint = damaged(copy_of, 1e6, steps=1)
    with pytest.raises(NonFiniteActionError, match=r"the model's output for action key 'x' of 'libero_sim' reaches "
                                                   r"\|values\| up to 1e\+06 in rows \[0\], beyond \+-1000 .*before "
                                                   r"unnormalization; the action was not sent") as refused:
        Gr00tPolicy(checkpoint, TAG, device="cpu").get_action(example_observation(checkpoint, TAG), {"seed": 0})
    assert (refused.value.key, refused.value.rows, refused.value.action) == ("x", [0], None)


def test_a_model_output_within_the_bound_is_decoded_as_before(copy_of):
    checkpoint = damaged(copy_of, 3.0, steps=1)  # beyond [-1, 1]: clipped to the statistics' edge, as upstream does
    action, _ = Gr00tPolicy(checkpoint, TAG, device="cpu").get_action(example_observation(checkpoint, TAG), {"seed": 0})
    high = json.loads((checkpoint / "statistics.json").read_text())[TAG]["action"]["x"]["q99"]
    assert np.allclose(action["x"], high)


def test_a_state_beyond_float16_once_normalized_is_refused_naming_the_state_for_a_float16_model(copy_of):
    import json

    checkpoint = copy_of()
    stats = json.loads((checkpoint / "statistics.json").read_text())
    joints = stats["new_embodiment"]["state"]["joints"]
    joints["mean"][5], joints["std"][5] = 1e5, 0.0  # a column constant in training: the model saw 1e5 there, raw
    (checkpoint / "statistics.json").write_text(json.dumps(stats))
    processor = Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)
    tag = "new_embodiment"  # its 'joints' is a mean/std key: not clipped to the statistics' range
    states = {key: np.asarray(value[0], np.float64)
              for key, value in example_observation(checkpoint, tag)["state"].items()}
    states["joints"][..., 5] = 1e5  # reaches the model as 1e5: float32 takes it, float16 cannot
    processor.normalize_state(tag, states)
    processor.model_float = "float16"
    with pytest.raises(ValueError, match=r"State key 'joints' of 'new_embodiment' normalizes to values beyond float16 "
                                         r"in rows \[0\].*or serve in bf16 or fp32"):
        processor.normalize_state(tag, states)
    states["joints"][..., 4] = 1e7  # far beyond its statistics: refused as such first, in any float
    with pytest.raises(ValueError, match=r"State key 'joints' of 'new_embodiment' normalizes to \|values\| up to \S+ "
                                         r"in rows \[0\], beyond \+-1000: column 4"):
        processor.normalize_state(tag, states)
    assert Gr00tPolicy(checkpoint, tag, device="cpu", dtype="float16").processor.model_float == "float16"


def test_saved_weights_are_as_readable_as_the_config_beside_them(tiny_checkpoint):
    # safetensors creates its files 0600: a checkpoint one user made could not be served by another
    weights = (tiny_checkpoint / "model.safetensors").stat().st_mode & 0o777
    assert weights == (tiny_checkpoint / "config.json").stat().st_mode & 0o777 and weights & 0o044


def test_unreadable_weights_are_named_as_unreadable_not_missing(copy_of, monkeypatch):
    from gr00t_server.model import CheckpointError, load_model

    checkpoint = copy_of()
    real_open = open

    def no_permission(path, *args, **kwargs):  # the tests run as root, whom chmod 000 does not stop
        if str(path).endswith("model.safetensors"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_permission)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: permission denied \(mode \d+, owner uid \d+\); make "
                                              r"the weights readable"):
        load_model(checkpoint, device="cpu")
