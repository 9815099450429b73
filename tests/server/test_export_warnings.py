"""What an ONNX export lets through of the warnings tracing raises: only the ones known to be harmless are hidden (a
blanket ignore also hid a new TracerWarning, which may mark a trace that fits one batch only, and torch's notice
that the exporter we use is deprecated)."""

import warnings

import pytest
import torch
from torch import nn

from gr00t_server.backends.export import ExportSpec, export_onnx

pytest.importorskip("onnx")


class ReadsAValueWhileTraced(nn.Module):
    """A forward that turns a tensor into a Python float: tracing records it as a constant and warns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum())


def test_an_export_shows_a_tracer_warning_of_code_it_does_not_know(tmp_path):
    spec = ExportSpec(ReadsAValueWhileTraced(), (torch.ones(2, 3),), ["x"], ["y"], {"x": {0: "batch"}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(spec, tmp_path / "model.onnx")
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert tracer and "Python float" in str(tracer[0].message), [str(w.message) for w in caught]
    assert not [w for w in caught if "legacy TorchScript-based ONNX export" in str(w.message)]  # known: hidden


def test_an_export_of_the_policy_modules_shows_no_warning(tiny_checkpoint, tmp_path):
    """The N1.7 modules' known trace-time constants (the attention scale, the timestep encoding, a shape check)
    stay hidden: an export prints nothing a user could act on."""
    from gr00t_server.backends.export import export_policy
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", dtype="fp32")
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_policy(policy, observation, tmp_path / "export", mode="full_pipeline")
    ours = [w for w in caught if issubclass(w.category, (torch.jit.TracerWarning, DeprecationWarning))]
    assert not ours, [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]
