"""A checkpoint that changes while a policy loads it (a `latest` link re-pointed, a newer checkpoint copied into the
folder): the policy serves one checkpoint's files, all read through the folder it resolved at the start, or refuses
the load naming the file that changed; identity() hashes the files that were loaded. Real tiny checkpoints; the
change is made at a known point, just before the weights are read."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gr00t_server.model.checkpoint import CheckpointError
from gr00t_server.policies import gr00t_policy
from gr00t_server.policies.gr00t_policy import Gr00tPolicy

TAG = "new_embodiment"
WEIGHT = "action_head.action_decoder.layer1.W"


@pytest.fixture
def two_checkpoints(copy_of, tmp_path):
    """(A, B): the tiny checkpoint, and a copy with other statistics and weights (as a later training step has)."""
    first = copy_of()
    second = tmp_path / "ckpt-later"
    shutil.copytree(first, second)
    statistics = json.loads((second / "statistics.json").read_text())
    gripper = statistics[TAG]["action"]["gripper"]
    gripper.update({name: [value * 100 for value in values] for name, values in gripper.items()})
    (second / "statistics.json").write_text(json.dumps(statistics))
    weights = load_file(second / "model.safetensors")
    weights[WEIGHT] = weights[WEIGHT] + 1.0
    save_file(weights, second / "model.safetensors", metadata={"format": "pt"})
    return first, second


def _before_the_weights_load(monkeypatch, change):
    """Run `change` once the policy has read its processor files, just before it reads the weights."""
    real_load_model = gr00t_policy.load_model

    def load_model(*args, **kwargs):
        change()
        return real_load_model(*args, **kwargs)

    monkeypatch.setattr(gr00t_policy, "load_model", load_model)


def _point(link, target):
    """Re-point `link` at `target` atomically (a new link renamed over it), as training scripts update `latest`."""
    fresh = link.with_name(link.name + ".tmp")
    os.symlink(target, fresh)
    os.replace(fresh, link)


def test_a_link_re_pointed_while_loading_serves_the_checkpoint_it_named_at_the_start(two_checkpoints, tmp_path,
                                                                                     monkeypatch):
    first, second = two_checkpoints
    latest = tmp_path / "latest"
    os.symlink(first, latest)
    expected = Gr00tPolicy(first, TAG, device="cpu").identity()
    _before_the_weights_load(monkeypatch, lambda: _point(latest, second))
    policy = Gr00tPolicy(latest, TAG, device="cpu")
    served = policy.model.state_dict()[WEIGHT]
    assert torch.equal(served, load_file(first / "model.safetensors")[WEIGHT])  # the weights of A
    statistics = json.loads((first / "statistics.json").read_text())[TAG]["action"]["gripper"]["q99"]
    np.testing.assert_allclose(policy.processor.norm_params(TAG).action["gripper"].high, statistics)  # A's statistics
    assert policy.identity() == expected
    assert str(policy.checkpoint_dir) == str(latest)  # the user's spelling, for messages


def test_a_file_rewritten_in_place_while_loading_is_refused_naming_it(two_checkpoints, monkeypatch):
    first, second = two_checkpoints
    statistics = first / "statistics.json"
    _before_the_weights_load(monkeypatch, lambda: statistics.write_bytes((second / "statistics.json").read_bytes()))
    with pytest.raises(CheckpointError) as info:
        Gr00tPolicy(first, TAG, device="cpu")
    assert str(info.value).startswith(f"{statistics} changed while the server loaded {first}"), info.value


def test_identity_hashes_the_files_that_were_loaded_not_those_there_later(two_checkpoints):
    first, second = two_checkpoints
    policy = Gr00tPolicy(first, TAG, device="cpu")
    loaded = policy.identity()
    shutil.copyfile(second / "statistics.json", first / "statistics.json")
    policy._identity = None  # computed again, as a policy that had not yet been asked would
    assert policy.identity() == loaded


def _counted_identity_work(monkeypatch):
    """{'taken': n, 'checked': n}: how often the checkpoint files' identities are taken (checkpoint_file_identities)
    and checked (refuse_changed_files), counted where both do their work."""
    from gr00t_server.model import checkpoint

    counts = {"taken": 0, "checked": 0}
    real_identities, real_first_changed = checkpoint.file_identities, checkpoint.first_changed

    def file_identities(paths):
        counts["taken"] += 1
        return real_identities(paths)

    def first_changed(identities):
        counts["checked"] += 1
        return real_first_changed(identities)

    monkeypatch.setattr(checkpoint, "file_identities", file_identities)
    monkeypatch.setattr(checkpoint, "first_changed", first_changed)
    return counts


def test_a_policy_load_takes_and_checks_the_checkpoint_files_identities_once(copy_of, monkeypatch):
    """Gr00tPolicy took and checked them, and load_model, which it calls, did the same again for the same folder."""
    checkpoint_dir = copy_of()
    counts = _counted_identity_work(monkeypatch)
    Gr00tPolicy(checkpoint_dir, TAG, device="cpu")
    assert counts == {"taken": 1, "checked": 1}


def test_load_model_alone_takes_and_checks_the_checkpoint_files_identities(copy_of, monkeypatch):
    from gr00t_server.model.checkpoint import load_model

    checkpoint_dir = copy_of()
    counts = _counted_identity_work(monkeypatch)
    load_model(checkpoint_dir, device="cpu")
    assert counts == {"taken": 1, "checked": 1}


def test_load_model_alone_refuses_a_file_rewritten_while_it_loads(two_checkpoints, monkeypatch):
    from gr00t_server.model import checkpoint

    first, second = two_checkpoints
    config = first / "config.json"
    real_shard_index = checkpoint.shard_index

    def shard_index(directory):  # once the identities are taken and config.json read, before the weights
        config.write_bytes(config.read_bytes() + b" ")
        return real_shard_index(directory)

    monkeypatch.setattr(checkpoint, "shard_index", shard_index)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_model(first, device="cpu")
    assert str(info.value).startswith(f"{config} changed while the server loaded {first}"), info.value


# --- the weights file truncated in place while it is read (cp, rsync --inplace, scp, a shell `>` over it) ---------

_TRUNCATE_WHILE_READING = """
import sys
from pathlib import Path
from gr00t_server.model import checkpoint

weights = Path(sys.argv[1]) / "model.safetensors"
real_read_tensor = checkpoint._read_tensor

def read_tensor(*args, **kwargs):  # the first tensor read finds the file cut to its first 4 KiB, as cp leaves it
    if weights.stat().st_size > 4096:
        with open(weights, "r+b") as rewritten:
            rewritten.truncate(4096)
    return real_read_tensor(*args, **kwargs)

checkpoint._read_tensor = read_tensor
try:
    checkpoint.load_model(sys.argv[1], device="cpu")
except checkpoint.CheckpointError as exc:
    print(exc)
    sys.exit(3)
"""


def test_weights_truncated_in_place_while_read_are_refused_naming_the_file_not_killed_by_sigbus(copy_of):
    # Read through a memory map, the process died of SIGBUS (exit 135 from the CLI) with nothing printed.
    import subprocess
    import sys

    checkpoint = copy_of()
    child = subprocess.run([sys.executable, "-c", _TRUNCATE_WHILE_READING, str(checkpoint)], capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 3, (child.returncode, child.stdout, child.stderr)
    expected = f"{checkpoint / 'model.safetensors'} changed (shrank) while it was read"
    assert child.stdout.startswith(expected), child.stdout


def test_the_cli_names_where_a_fatal_signal_struck(tmp_path):
    # faulthandler: a SIGBUS or SIGSEGV prints the Python stack of each thread before the process dies
    import subprocess
    import sys

    program = ("import faulthandler, sys\nfrom gr00t_server import cli\n"
               "cli._main = lambda argv: print(faulthandler.is_enabled()) or 0\nsys.exit(cli.main())")
    child = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0 and child.stdout.strip() == "True", (child.stdout, child.stderr)
