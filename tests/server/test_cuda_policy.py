"""Gr00tPolicy on a CUDA GPU with PyTorch alone: the numbers match the CPU, preprocessing on the GPU matches the
CPU's, and a served GPU policy answers over ZeroMQ (torch.compile on CUDA: test_backends_gpu.py).

Marked gpu: skipped without CUDA. GR00T_GPU_TEST_DEVICE=cpu runs the same assertions on the CPU, to check the
tests themselves on a machine without a GPU.
"""

import os

import numpy as np
import pytest
import torch

from gr00t_client import PolicyClient
from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.test_checkpoint import example_observation
from serving import running_server

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

TAG = "new_embodiment"
DEVICE = os.environ.get("GR00T_GPU_TEST_DEVICE", "cuda")
CPU_CHECKABLE = True  # tests/conftest.py: GR00T_GPU_TEST_DEVICE=cpu runs this module without a GPU


def policy_on(checkpoint, dtype, preprocess_device=None):
    return Gr00tPolicy(model_path=checkpoint, embodiment_tag=TAG, device=DEVICE, dtype=dtype, strict=True,
                       preprocess_device=preprocess_device)


def actions(policy, observation, seed=0):
    action, _ = policy.get_action(observation, {"seed": seed})
    return {key: np.asarray(value, dtype=np.float64) for key, value in action.items()}


def cosine(a, b):
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


@pytest.fixture(scope="module")
def observation(tiny_checkpoint):
    return example_observation(tiny_checkpoint, TAG, batch_size=2, seed=3)


@pytest.fixture(scope="module")
def cpu_fp32_actions(tiny_checkpoint, observation):
    cpu = Gr00tPolicy(model_path=tiny_checkpoint, embodiment_tag=TAG, device="cpu", dtype="float32")
    return actions(cpu, observation)


def test_fp32_on_the_gpu_matches_the_cpu(tiny_checkpoint, observation, cpu_fp32_actions):
    gpu = actions(policy_on(tiny_checkpoint, "float32"), observation)
    assert gpu.keys() == cpu_fp32_actions.keys()
    for key, expected in cpu_fp32_actions.items():
        assert gpu[key].shape == expected.shape, key
        assert np.isfinite(gpu[key]).all(), key
        # TF32 may be on for matmuls on the GPU; 1e-2 of the action's range is far below any policy difference.
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(gpu[key], expected, atol=1e-2 * scale, err_msg=key)


def test_bf16_on_the_gpu_tracks_fp32_on_the_cpu(tiny_checkpoint, observation, cpu_fp32_actions):
    policy = policy_on(tiny_checkpoint, None)  # the default dtype: bf16 on CUDA
    if DEVICE.startswith("cuda"):
        assert policy.model.dtype == torch.bfloat16
    gpu = actions(policy, observation)
    for key, expected in cpu_fp32_actions.items():
        assert np.isfinite(gpu[key]).all(), key
        similarity = cosine(gpu[key], expected)
        print(f"{key}: cosine(bf16 {DEVICE}, fp32 cpu) = {similarity:.5f}")
        assert similarity > 0.98, (key, similarity)


def test_preprocessing_on_the_gpu_matches_preprocessing_on_the_cpu(tiny_checkpoint, observation):
    on_gpu = policy_on(tiny_checkpoint, "float32", preprocess_device=DEVICE)
    on_cpu = policy_on(tiny_checkpoint, "float32", preprocess_device="cpu")
    assert on_gpu.preprocess_device.type == torch.device(DEVICE).type
    assert on_cpu.preprocess_device.type == "cpu"
    first, second = actions(on_gpu, observation), actions(on_cpu, observation)
    for key, expected in second.items():
        np.testing.assert_allclose(first[key], expected, atol=1e-4, err_msg=key)


def test_a_served_gpu_policy_answers_with_its_stage_timings(tiny_checkpoint, observation):
    policy = policy_on(tiny_checkpoint, None)
    with running_server(policy) as server:
        client = PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=60000)
        try:
            action, info = client.get_action(observation, {"seed": 0, "return_server_timing": True})
        finally:
            client.close()
    direct = actions(policy, observation)
    for key, expected in direct.items():
        np.testing.assert_allclose(np.asarray(action[key], dtype=np.float64), expected, atol=1e-3, err_msg=key)
    timing = info.get("server_timing")
    assert timing is not None, f"no server_timing in {sorted(info)}"
    for stage in ("preprocess_ms", "model_ms", "postprocess_ms"):
        assert timing[stage] >= 0, timing

