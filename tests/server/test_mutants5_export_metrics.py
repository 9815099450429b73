"""Mutants of the export folder's life cycle (backends/export_dir.py), the Prometheus endpoint (serving/metrics.py)
and the embodiment tags (gr00t_client/embodiment.py) that no test noticed: a stale backup put back over a whole
newer export, a failed swap that leaves new files behind, refusals that stop naming the folder, an over-cap metrics
connection held until its deadline, stage times in ms, batch sizes lost, and tag look-ups that match too much.
Real files in tmp_path, real servers and real HTTP scrapes on loopback; the export files are written by hand (no
ONNX export runs here)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from gr00t_client import EmbodimentTag, PolicyClient
from gr00t_server.backends import BackendError
from gr00t_server.backends.common import EXPORT_METADATA
from gr00t_server.backends.export_dir import check_collisions, make_work_dir, own_files, remove_stale_work_dirs, swap_in
from gr00t_server.server import PolicyServer
from serving import running_server
from eval.test_run_dir_leftovers import ended_pid

prometheus_parser = pytest.importorskip("prometheus_client.parser")
from test_metrics_under_failure import FaultyPolicy  # noqa: E402 - needs prometheus_client
from test_metrics_under_failure import observation as faulty_observation  # noqa: E402
from test_prometheus_metrics import NapPolicy, observation, scrape  # noqa: E402


# --- export folders, written by hand --------------------------------------------------------------


def write_export(folder: Path, graph: bytes) -> None:
    """A dit_only export of one graph file (dit_fp32.onnx) whose metadata lists its size and sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dit_fp32.onnx").write_bytes(graph)
    digest = {"size": len(graph), "sha256": hashlib.sha256(graph).hexdigest()}
    metadata = {"export_mode": "dit_only", "marker": graph.decode(),
                "submodules": {"dit": {"file": "dit_fp32.onnx", "files": {"dit_fp32.onnx": digest}}}}
    (folder / EXPORT_METADATA).write_text(json.dumps(metadata))


def contents(folder: Path) -> dict:
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in folder.iterdir()}


def test_a_corrupt_metadata_in_the_output_is_refused_saying_how_to_free_the_folder(tmp_path):
    # mutant: own_files dropped "; move it away or delete it to export into <folder>" from the refusal
    (tmp_path / EXPORT_METADATA).write_text("{not json")
    with pytest.raises(BackendError, match="is not valid JSON") as info:
        own_files(tmp_path)
    assert f"move it away or delete it to export into {tmp_path}" in str(info.value)


def test_a_leftover_backup_of_a_dead_export_never_replaces_the_whole_export_that_followed_it(tmp_path):
    # mutant: remove_stale_work_dirs restored a dead export's backup even when the folder held a whole export
    # (killed after its swap, before deleting the backup): the older export came back over the newer one
    folder = tmp_path / "onnx"
    write_export(folder, b"new")
    write_export(folder / f".gr00t-export-previous-{ended_pid()}-abc123", b"old")
    remove_stale_work_dirs(folder)
    assert contents(folder) == {"dit_fp32.onnx": b"new", EXPORT_METADATA: (folder / EXPORT_METADATA).read_bytes()}
    assert json.loads((folder / EXPORT_METADATA).read_text())["marker"] == "new"


def test_the_work_folder_of_a_live_export_is_not_removed_as_stale(tmp_path):
    # mutant: remove_stale_work_dirs removed work folders whatever made them (here: this process, still exporting)
    write_export(tmp_path, b"old")
    live = make_work_dir(tmp_path, "staging")
    (live / "dit_fp32.onnx").write_bytes(b"being written")
    remove_stale_work_dirs(tmp_path)
    assert (live / "dit_fp32.onnx").read_bytes() == b"being written"


def test_a_dangling_symlink_of_the_users_is_a_collision(tmp_path):
    # mutant: check_collisions used os.path.exists, which is False for a dangling symlink: the swap replaced it
    (tmp_path / "dit_fp32.onnx").symlink_to(tmp_path / "not-there-yet.onnx")
    with pytest.raises(BackendError, match="was not written by an earlier export") as info:
        check_collisions(tmp_path, ["dit_fp32.onnx", EXPORT_METADATA], [])
    assert str(tmp_path / "dit_fp32.onnx") in str(info.value)


def staged(folder: Path, names: dict) -> Path:
    staging = folder / f".gr00t-export-staging-{os.getpid()}-test"
    staging.mkdir()
    for name, data in names.items():
        (staging / name).write_bytes(data)
    return staging


def test_a_re_export_over_an_export_missing_one_of_its_files_swaps_in(tmp_path):
    # mutant: swap_in moved aside every listed file without checking it was there (FileNotFoundError)
    write_export(tmp_path, b"old")
    own = own_files(tmp_path)
    (tmp_path / "dit_fp32.onnx").unlink()  # the user deleted a file of the earlier export
    staging = staged(tmp_path, {"dit_fp32.onnx": b"new", EXPORT_METADATA: b"{}"})
    swap_in(tmp_path, staging, own)
    assert (tmp_path / "dit_fp32.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dit_fp32.onnx", EXPORT_METADATA, staging.name])


def fail_moving_in(monkeypatch, folder: Path, name: str, error: BaseException) -> None:
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == folder / name and ".gr00t-export-previous" not in str(src):
            raise error
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_a_swap_failing_at_the_metadata_takes_back_the_new_files_it_had_moved_in(tmp_path, monkeypatch):
    # mutant: _roll_back left the new files already moved in (llm_fp32.onnx, a name the old export lacked) in place
    write_export(tmp_path, b"old")
    before = contents(tmp_path)
    staging = staged(tmp_path, {"dit_fp32.onnx": b"new", "llm_fp32.onnx": b"new llm", EXPORT_METADATA: b"{}"})
    fail_moving_in(monkeypatch, tmp_path, EXPORT_METADATA, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        swap_in(tmp_path, staging, own_files(tmp_path))
    assert {name: data for name, data in contents(tmp_path).items() if name != staging.name} == before
    assert sorted(p.name for p in staging.iterdir()) == sorted(["dit_fp32.onnx", "llm_fp32.onnx", EXPORT_METADATA])


def test_a_swap_failing_on_a_full_disk_names_the_folder_and_says_the_earlier_export_is_unchanged(tmp_path, monkeypatch):
    # mutant: _disk_error's message lost the file/folder and "the earlier export ... is unchanged"
    write_export(tmp_path, b"old")
    staging = staged(tmp_path, {"dit_fp32.onnx": b"new", EXPORT_METADATA: b"{}"})
    fail_moving_in(monkeypatch, tmp_path, EXPORT_METADATA, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(BackendError) as info:
        swap_in(tmp_path, staging, own_files(tmp_path))
    message = str(info.value)
    assert "No space left on device" in message and f"the earlier export in {tmp_path} is unchanged" in message
    assert (tmp_path / "dit_fp32.onnx").read_bytes() == b"old"


# --- export_model and clear_export_dir -----------------------------------------------------------


@pytest.fixture(scope="module")
def export_policy_and_observation(tiny_checkpoint):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    return (Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", dtype="fp32"),
            example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, seed=1))


@pytest.mark.parametrize("option, value, message", [
    ("mode", "everything", "unknown export mode 'everything'; expected one of"),
    ("precision", "fp8", "unknown precision 'fp8'; expected one of"),
])
def test_an_unknown_mode_or_precision_is_refused_by_name_before_anything_is_written(
        export_policy_and_observation, tmp_path, option, value, message):
    # mutants: export_model dropped its mode / precision check (a KeyError, after the sample get_action ran)
    from gr00t_server.backends.export import export_policy

    policy, sample = export_policy_and_observation
    with pytest.raises(BackendError, match=message):
        export_policy(policy, sample, tmp_path / "onnx", **{"mode": "dit_only", "precision": "fp32", option: value})
    assert not (tmp_path / "onnx").exists()


def test_re_exporting_external_weights_into_the_same_folder_does_not_grow_the_data_file(
        export_policy_and_observation, tmp_path, monkeypatch):
    # mutant: _save_consolidated kept the earlier <name>.onnx.data, which onnx appends to: stale bytes in each re-export
    from gr00t_server.backends import export as export_module

    policy, sample = export_policy_and_observation
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 0)
    first = export_module.export_policy(policy, sample, tmp_path, mode="dit_only", precision="fp32")
    second = export_module.export_policy(policy, sample, tmp_path, mode="dit_only", precision="fp32")
    data = tmp_path / "dit_fp32.onnx.data"
    assert second["submodules"]["dit"]["files"] == first["submodules"]["dit"]["files"]
    assert data.stat().st_size == first["submodules"]["dit"]["files"]["dit_fp32.onnx.data"]["size"]


def test_clear_export_dir_removes_the_metadata_and_files_and_nothing_else(tmp_path):
    # mutant: clear_export_dir left export_metadata.json: a folder that looks like a whole export, its files gone
    from gr00t_server.backends.export import clear_export_dir

    write_export(tmp_path, b"old")
    (tmp_path / "notes.txt").write_text("mine")
    clear_export_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# --- the metrics endpoint -------------------------------------------------------------------------


def test_a_metrics_connection_over_the_cap_is_closed_at_once_not_at_its_deadline(monkeypatch):
    # mutant: the cap compared with > (one connection more than the cap was held, until its 30 s deadline)
    from gr00t_server.serving import metrics

    monkeypatch.setattr(metrics, "METRICS_MAX_CONNECTIONS", 2)
    server = PolicyServer(NapPolicy(), host="127.0.0.1", port=0, metrics_port=0).start()
    held = []
    try:
        for _ in range(2):
            held.append(socket.create_connection(("127.0.0.1", server.metrics_port), timeout=10))
            held[-1].sendall(b"G")
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", server.metrics_port), timeout=3)
        try:
            assert extra.recv(1024) == b""  # a timeout here: the server kept it open
        finally:
            extra.close()
    finally:
        for sock in held:
            sock.close()
        server.close()


def test_an_idle_metrics_connection_timing_out_logs_no_warning(monkeypatch, caplog):
    # mutant: _handle_error logged the expected end of an idle connection (an OSError) as an error serving a scrape
    from gr00t_server.serving import metrics

    monkeypatch.setattr(metrics, "METRICS_CONNECTION_TIMEOUT_S", 0.3)
    server = PolicyServer(NapPolicy(), host="127.0.0.1", port=0, metrics_port=0).start()
    try:
        with caplog.at_level(logging.WARNING, logger="gr00t_server.serving"):
            idle = socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5)
            idle.sendall(b"GET /metr")
            assert idle.recv(1024) == b""
            idle.close()
            time.sleep(0.3)  # the handler thread's error report, if any, comes after the close
        assert scrape(server)  # and the endpoint still serves
    finally:
        server.close()
    assert not [r for r in caplog.records if "metrics" in r.getMessage()], caplog.text


def test_closing_the_server_ends_its_metrics_deadline_thread():
    # mutant: close() did not stop the _ConnectionGuard: its deadline thread ran on, one more per server started
    def deadline_threads():
        return [t for t in threading.enumerate() if t.name == "gr00t-metrics-deadline"]

    before = set(deadline_threads())
    server = PolicyServer(NapPolicy(), host="127.0.0.1", port=0, metrics_port=0).start()
    ours = [t for t in deadline_threads() if t not in before]
    assert len(ours) == 1
    server.close()
    ours[0].join(5)
    assert not ours[0].is_alive()


def test_stage_histograms_are_in_seconds():
    # mutant: observe_stages observed the milliseconds as they came (a 10 ms policy call read 10 s)
    with running_server(NapPolicy(nap_s=0.01), metrics_port=0) as server, PolicyClient(port=server.port) as client:
        for _ in range(3):
            client.get_action(observation())
        samples = scrape(server)
    assert 0.03 <= samples[("gr00t_request_stage_seconds_sum", (("stage", "policy"),))] < 2.0


class HeldPolicy(FaultyPolicy):
    """FaultyPolicy whose state 6 holds its call until `release` is set."""

    def __init__(self) -> None:
        super().__init__(batching=True)
        self.holding, self.release = threading.Event(), threading.Event()

    def _get_action(self, observation, options=None):
        if float(observation["state"]["x"].reshape(-1)[0]) == 6:
            self.holding.set()
            self.release.wait(20)
        return super()._get_action(observation, options)


def test_the_batch_size_histogram_records_a_merged_call_as_its_size():
    # mutant: observe_batch observed 1 for every policy call
    policy = HeldPolicy()
    with running_server(policy, max_batch_size=8, batch_timeout_ms=0, inline_below_ms=0, metrics_port=0) as server:
        def call(value):
            with PolicyClient(port=server.port, timeout_ms=20000) as client:
                client.get_action(faulty_observation(value))

        busy = threading.Thread(target=call, args=(6,))  # holds the worker while the two below gather
        busy.start()
        assert policy.holding.wait(10)
        pair = [threading.Thread(target=call, args=(0,)) for _ in range(2)]
        for thread in pair:
            thread.start()
        deadline = time.monotonic() + 10
        while server._loop.queued_requests < 3 and time.monotonic() < deadline:  # the held call and the pair
            time.sleep(0.01)
        policy.release.set()
        for thread in [busy, *pair]:
            thread.join(20)
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            batch_sizes = client.get_server_info()["stats"]["batch_sizes"]
        samples = scrape(server)
    assert batch_sizes == {"1": 1, "2": 1}
    assert samples[("gr00t_batch_size_count", ())] == 2
    assert samples[("gr00t_batch_size_sum", ())] == 3
    assert samples[("gr00t_batch_size_bucket", (("le", "1.0"),))] == 1


# --- embodiment tags ------------------------------------------------------------------------------


def test_reverse_lookup_matches_a_value_exactly():
    # mutant: reverse_lookup ignored case: a checkpoint's own "LIBERO_SIM" was advertised as --embodiment-tag
    # LIBERO_PANDA, which is libero_sim, another tag
    assert EmbodimentTag.reverse_lookup("LIBERO_SIM") == "LIBERO_SIM"
    assert EmbodimentTag.reverse_lookup("libero_sim") == "LIBERO_PANDA"


def test_the_unknown_tag_message_lists_each_tag_once_under_its_own_category():
    # mutant: every tag was listed under every category header
    with pytest.raises(ValueError) as info:
        EmbodimentTag.resolve("gr1_humanoid")
    message = str(info.value)
    listed = [line.split(" -> ")[1] for line in message.splitlines() if " -> " in line]
    assert sorted(listed) == sorted(member.value for member in EmbodimentTag)
    posttrain = message.split("Posttrain tags")[1].split("Finetuning-only tags")[0]
    assert "libero_sim" in posttrain and "new_embodiment" not in posttrain
