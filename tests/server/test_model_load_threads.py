"""Loading a checkpoint from several threads: each load gets its weights, and modules other threads build are untouched."""

import threading

import torch
from torch import nn

from gr00t_server.model import load_model
from gr00t_server.model.checkpoint import parameters_on_meta


def in_threads(count, work):
    """Run work(index) in `count` threads released together; the results (or exceptions) in order."""
    results = [None] * count
    barrier = threading.Barrier(count)

    def run(index):
        barrier.wait()
        try:
            results[index] = work(index)
        except Exception as exc:  # reported by the test's assertion
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_concurrent_loads_both_succeed_and_equal_a_lone_load(tiny_checkpoint):
    alone = load_model(tiny_checkpoint, device="cpu")[0].state_dict()
    for _ in range(2):
        loaded = in_threads(2, lambda index: load_model(tiny_checkpoint, device="cpu")[0])
        assert not [result for result in loaded if isinstance(result, Exception)], loaded
        for model in loaded:
            state = model.state_dict()
            assert state.keys() == alone.keys()
            assert all(torch.equal(state[key], alone[key]) for key in alone)


def test_a_module_another_thread_builds_during_a_load_has_real_parameters():
    built = {}
    with parameters_on_meta():
        assert nn.Linear(2, 2).weight.device.type == "meta"
        other = threading.Thread(target=lambda: built.update(linear=nn.Linear(2, 2)))
        other.start()
        other.join()
    assert built["linear"].weight.device.type == "cpu"
    assert built["linear"].bias.device.type == "cpu"


def test_after_a_load_new_modules_have_real_parameters_and_torch_is_unpatched(tiny_checkpoint):
    original = nn.Module.register_parameter
    load_model(tiny_checkpoint, device="cpu")
    in_threads(2, lambda index: load_model(tiny_checkpoint, device="cpu"))
    assert nn.Linear(2, 2).weight.device.type == "cpu"
    assert nn.Module.register_parameter is original
