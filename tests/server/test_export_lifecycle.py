"""The export folder's life cycle: re-export over an earlier export, foreign files, interrupts, and what serving trusts."""

import argparse
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from eval.test_run_dir_leftovers import ended_pid

from gr00t_server.backends import BackendError, apply_inference_mode, commands
from gr00t_server.backends import export as export_module
from gr00t_server.backends.common import EXPORT_METADATA, model_of
from gr00t_server.backends.export import export_policy
from gr00t_server.cli import main
from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.test_checkpoint import example_observation

pytest.importorskip("onnxruntime")

TAG = "new_embodiment"


def parse(argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def export_argv(checkpoint, output):
    return ["export", "--model-path", str(checkpoint), "--output", str(output), "--mode", "dit_only",
            "--precision", "fp32", "--embodiment-tag", TAG, "--device", "cpu"]


def snapshot(folder):
    """Every visible and hidden entry of a folder with its bytes (None for folders)."""
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in Path(folder).iterdir()}


def metadata_of(folder):
    return json.loads((Path(folder) / EXPORT_METADATA).read_text())


@pytest.fixture(scope="module")
def policy(tiny_checkpoint):
    return Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def observation(tiny_checkpoint):
    return example_observation(tiny_checkpoint, TAG, batch_size=1, seed=1)


@pytest.fixture(scope="module")
def base_export(tiny_checkpoint, tmp_path_factory):
    """A dit_only fp32 export made through the `export` command (copied, never changed, by the tests)."""
    out = tmp_path_factory.mktemp("base") / "onnx"
    assert commands.run(parse(export_argv(tiny_checkpoint, out))) == 0
    return out


@pytest.fixture(scope="module")
def other_export(tiny_checkpoint, observation, tmp_path_factory):
    """A dit_only fp32 export of other DiT weights of the same architecture."""
    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", dtype="fp32")
    with torch.no_grad():
        for parameter in model_of(policy).action_head.model.parameters():
            parameter.add_(0.01)
    out = tmp_path_factory.mktemp("other") / "onnx"
    export_policy(policy, observation, out, mode="dit_only")
    return out


@pytest.fixture
def earlier(base_export, tmp_path):
    """A copy of the base export that a test re-exports into."""
    out = tmp_path / "onnx"
    shutil.copytree(base_export, out)
    return out


def fake_filesystem_boundary(monkeypatch, folder):
    """os.replace raises EXDEV for a move into or out of `folder`, as for a mount point or tmpfs."""
    real_replace, inside_root = os.replace, Path(folder).resolve()

    def inside(path):
        resolved = Path(path).resolve()
        return resolved == inside_root or inside_root in resolved.parents

    def replace(src, dst, *args, **kwargs):
        if inside(src) != inside(dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), None, str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


# --- another filesystem, failed and interrupted swaps ---------------------------------------------


def test_export_into_a_folder_on_another_filesystem_succeeds(tiny_checkpoint, earlier, monkeypatch):
    fake_filesystem_boundary(monkeypatch, earlier)
    metadata = metadata_of(earlier)
    metadata["submodules"]["dit"]["marker"] = "earlier"  # tells the earlier export's metadata from the new one
    (earlier / EXPORT_METADATA).write_text(json.dumps(metadata))
    assert commands.run(parse(export_argv(tiny_checkpoint, earlier))) == 0
    assert "marker" not in metadata_of(earlier)["submodules"]["dit"]
    assert sorted(p.name for p in earlier.iterdir()) == ["dit_fp32.onnx", EXPORT_METADATA]


def test_export_through_a_symlink_to_another_filesystem_stages_beside_the_real_folder(
        tiny_checkpoint, earlier, tmp_path, monkeypatch):
    link = tmp_path / "link"
    link.symlink_to(earlier)
    fake_filesystem_boundary(monkeypatch, earlier)
    assert commands.run(parse(export_argv(tiny_checkpoint, link))) == 0
    assert sorted(p.name for p in earlier.iterdir()) == ["dit_fp32.onnx", EXPORT_METADATA]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "onnx"]  # nothing staged beside the link


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(errno.EIO, "Input/output error")])
def test_a_swap_that_fails_midway_leaves_the_earlier_export_whole(tiny_checkpoint, earlier, monkeypatch, failure):
    before = snapshot(earlier)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == earlier / EXPORT_METADATA and ".gr00t-export-previous" not in str(src):
            raise failure  # the last move of the swap: the new files are in, the old ones aside
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises((KeyboardInterrupt, ValueError)) as info:
        commands.run(parse(export_argv(tiny_checkpoint, earlier)))
    assert "\n" not in str(info.value)
    assert snapshot(earlier) == before


# --- files the export did not write ---------------------------------------------------------------


def test_re_export_leaves_files_it_did_not_write_alone(tiny_checkpoint, earlier):
    (earlier / "detector.onnx").write_text("a user's model")
    (earlier / "detector.onnx.data").write_text("its weights")
    (earlier / "yolo.onnx").mkdir()
    (earlier / "yolo.onnx" / "model.bin").write_text("weights")
    (earlier / "notes.txt").write_text("notes")
    assert commands.run(parse(export_argv(tiny_checkpoint, earlier))) == 0
    assert (earlier / "detector.onnx").read_text() == "a user's model"
    assert (earlier / "detector.onnx.data").read_text() == "its weights"
    assert (earlier / "yolo.onnx" / "model.bin").read_text() == "weights"
    assert (earlier / "notes.txt").read_text() == "notes"
    assert (earlier / "dit_fp32.onnx").is_file()


def test_export_refuses_to_overwrite_a_file_it_did_not_write(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "models"
    out.mkdir()
    (out / "dit_fp32.onnx").write_text("a user's model")
    assert main(export_argv(tiny_checkpoint, out)) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(out / "dit_fp32.onnx") in error and "was not written by an earlier export" in error
    assert (out / "dit_fp32.onnx").read_text() == "a user's model"
    assert sorted(p.name for p in out.iterdir()) == ["dit_fp32.onnx"]


# --- interrupts -----------------------------------------------------------------------------------


def test_sigterm_during_export_removes_the_staged_files(earlier, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from pathlib import Path
        from gr00t_server.backends import export
        def export_checkpoint(model_path, output_dir, **kwargs):
            (Path(output_dir) / "dit_fp32.onnx").write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        export.export_checkpoint = export_checkpoint
        from gr00t_server.cli import main
        sys.exit(main(["export", "--model-path", "unused", "--output", {str(earlier)!r}, "--mode", "dit_only",
                       "--precision", "fp32", "--device", "cpu"]))
    """)
    before = snapshot(earlier)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 130, result.stderr
    assert snapshot(earlier) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


@pytest.mark.parametrize("earlier_export", [True, False], ids=["over-an-earlier-export", "into-a-new-folder"])
def test_ctrl_c_during_export_says_the_earlier_export_is_unchanged_or_that_nothing_was_written(
        earlier, tmp_path, monkeypatch, capsys, earlier_export):
    """An interrupted export printed only "interrupted", where docs/serving.md promises its message says which."""
    def export_checkpoint(model_path, output_dir, **kwargs):
        (Path(output_dir) / "dit_fp32.onnx").write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the export writes its files
        time.sleep(30)

    monkeypatch.setattr(export_module, "export_checkpoint", export_checkpoint)
    folder = earlier if earlier_export else tmp_path / "new"
    before = snapshot(earlier)
    assert main(export_argv("unused", folder)) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    left = (f"the earlier export in {folder} is unchanged" if earlier_export else
            f"nothing was written (there was no export in {folder} before)")
    assert line == f"gr00t-server export: interrupted; {left}", line
    assert snapshot(earlier) == before and not (tmp_path / "new").exists()


def test_a_staging_folder_left_by_a_killed_export_is_removed_by_the_next(tiny_checkpoint, earlier):
    dead = ended_pid()
    stale = earlier / f".gr00t-export-staging-{dead}-abc123"
    stale.mkdir()
    (stale / "dit_fp32.onnx").write_bytes(b"partial")
    assert commands.run(parse(export_argv(tiny_checkpoint, earlier))) == 0
    assert sorted(p.name for p in earlier.iterdir()) == ["dit_fp32.onnx", EXPORT_METADATA]


@pytest.mark.parametrize("moved_in", [0, 1, 2], ids=["killed-moving-aside", "killed-moving-in", "new-dit-moved-in"])
def test_an_export_killed_mid_swap_gets_the_earlier_export_back(tiny_checkpoint, earlier, policy, observation, tmp_path,
                                                                 moved_in):
    """SIGKILL in the swap left a folder without metadata; the next export deleted the backup of the earlier export
    as stale and then refused the folder. The earlier export is now put back first."""
    from gr00t_server.backends.export_dir import remove_stale_work_dirs

    before = snapshot(earlier)
    new = tmp_path / "new"
    export_policy(policy, observation, new, mode="action_head")  # the export that was being swapped in
    new_files = sorted(p.name for p in new.iterdir() if p.name != EXPORT_METADATA)
    dead = ended_pid()
    backup = earlier / f".gr00t-export-previous-{dead}-abc123"
    staging = earlier / f".gr00t-export-staging-{dead}-def456"
    shutil.copytree(new, staging)
    backup.mkdir()
    os.replace(earlier / EXPORT_METADATA, backup / EXPORT_METADATA)  # the swap moves the metadata aside first
    if moved_in:  # all old files aside, then some new ones in (dit_fp32.onnx, the old export's name, last)
        os.replace(earlier / "dit_fp32.onnx", backup / "dit_fp32.onnx")
        in_first = [name for name in new_files if name != "dit_fp32.onnx"][:1] + (["dit_fp32.onnx"] if moved_in == 2 else [])
        for name in in_first:
            os.replace(staging / name, earlier / name)
    with pytest.raises(BackendError, match=f"was killed in the middle of its swap, and the earlier export's files are "
                                           f"in {backup.name}: the next `gr00t-server export` into it puts them back"):
        apply_inference_mode(policy, "onnxruntime", onnx_dir=earlier)  # serving says what happened
    remove_stale_work_dirs(earlier)
    assert snapshot(earlier) == before  # the earlier export, byte for byte, and no work folders
    assert apply_inference_mode(Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", dtype="fp32"), "onnxruntime",
                                onnx_dir=earlier) == ["dit"]
    assert commands.run(parse(export_argv(tiny_checkpoint, earlier))) == 0  # and the folder takes a new export


def test_a_first_export_killed_mid_swap_leaves_its_folder_usable_by_the_next(tiny_checkpoint, tmp_path):
    """With no earlier export to put back, the next export deleted the dead one's staging folder (the only record of
    what it had moved in) and then refused its own folder: 'action_decoder.onnx was not written by an earlier
    export', until the user deleted the file by hand."""
    new = tmp_path / "new"
    assert commands.run(parse(export_argv(tiny_checkpoint, new))) == 0  # what the killed export was swapping in
    names = sorted(p.name for p in new.iterdir() if p.name != EXPORT_METADATA)
    folder = tmp_path / "first"
    folder.mkdir()
    dead = ended_pid()
    staging = folder / f".gr00t-export-staging-{dead}-def456"
    shutil.copytree(new, staging)
    (folder / f".gr00t-export-previous-{dead}-abc123").mkdir()  # empty: nothing earlier was moved aside
    os.replace(staging / names[0], folder / names[0])  # killed after moving its first file in
    user_file = folder / "notes.txt"
    user_file.write_text("mine")
    assert commands.run(parse(export_argv(tiny_checkpoint, folder))) == 0
    assert (folder / EXPORT_METADATA).is_file() and user_file.read_text() == "mine"
    assert not [p for p in folder.iterdir() if p.name.startswith(".gr00t-export-")]


def test_a_staging_folder_of_a_killed_export_with_this_exports_pid_is_removed(tiny_checkpoint, earlier):
    """In containers every export is PID 1: the dead export's pid is the next one's own and looked alive, so its
    staging folder (GBs for a 3B model) stayed for ever."""
    stale = earlier / f".gr00t-export-staging-{os.getpid()}-abc123"
    stale.mkdir()
    (stale / "llm_fp32.onnx").write_bytes(b"partial")
    assert commands.run(parse(export_argv(tiny_checkpoint, earlier))) == 0
    assert sorted(p.name for p in earlier.iterdir()) == ["dit_fp32.onnx", EXPORT_METADATA]


def test_an_export_killed_mid_swap_with_this_exports_pid_gets_the_earlier_export_back(tiny_checkpoint, earlier):
    """With the dead export's pid reused (PID 1 in a container), its backup was not put back and the export into the
    folder failed: 'dit_fp32.onnx was not written by an earlier export', against what serve and verify promise."""
    backup = earlier / f".gr00t-export-previous-{os.getpid()}-killed0"
    backup.mkdir()
    os.replace(earlier / EXPORT_METADATA, backup / EXPORT_METADATA)  # the swap moves the metadata aside first
    assert commands.run(parse(export_argv(tiny_checkpoint, earlier))) == 0
    assert sorted(p.name for p in earlier.iterdir()) == ["dit_fp32.onnx", EXPORT_METADATA]


def test_ctrl_c_during_the_swap_waits_for_it_and_the_export_reports_what_it_installed(tiny_checkpoint, earlier,
                                                                                       monkeypatch, caplog):
    """A Ctrl-C in the swap waited for it, then reported "interrupted" (exit 130) over a folder holding the new export."""
    real_replace, pressed = os.replace, []

    def replace_and_press_ctrl_c(src, dst, *args, **kwargs):
        if not pressed:
            pressed.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # held by the swap until it is done
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace_and_press_ctrl_c)
    argv = export_argv(tiny_checkpoint, earlier)
    argv[argv.index("dit_only")] = "action_head"
    with caplog.at_level("WARNING"):
        assert commands.run(parse(argv)) == 0
    assert pressed and metadata_of(earlier)["export_mode"] == "action_head"
    assert f"SIGINT came during the swap, which it waited for: {earlier} holds the new export" in caplog.text


def test_a_failed_export_into_a_new_output_leaves_no_empty_folders(tiny_checkpoint, tmp_path):
    def export_for_an_unknown_robot(output):
        argv = export_argv(tiny_checkpoint, output)
        argv[argv.index(TAG)] = "no_such_robot"
        with pytest.raises(ValueError, match="Unknown embodiment tag: 'no_such_robot'"):
            commands.run(parse(argv))

    export_for_an_unknown_robot(tmp_path / "new" / "onnx")
    assert list(tmp_path.iterdir()) == []  # both folders it created are gone again
    (tmp_path / "kept").mkdir()
    export_for_an_unknown_robot(tmp_path / "kept")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]  # a folder that was there before stays


def test_disk_full_names_the_export_folder(earlier, monkeypatch, capsys):
    def export_checkpoint(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "export_checkpoint", export_checkpoint)
    before = snapshot(earlier)
    assert main(export_argv("unused", earlier)) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "No space left on device" in error and str(earlier) in error
    assert snapshot(earlier) == before


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("mount") is None or os.geteuid() != 0,
                    reason="mounts a tmpfs (root on Linux)")
def test_disk_full_in_a_new_export_folder_says_nothing_was_written_not_that_an_earlier_export_is_kept(
        tiny_checkpoint, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        assert main(export_argv(tiny_checkpoint, disk / "onnx")) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "No space left on device" in error, error
        assert f"nothing was written (there was no export in {disk / 'onnx'} before)" in error, error
        assert "earlier export" not in error
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("mount") is None or os.geteuid() != 0,
                    reason="mounts a tmpfs and remounts it read-only (root on Linux)")
def test_re_export_into_a_read_only_folder_names_it_and_says_the_earlier_export_is_unchanged(
        tiny_checkpoint, base_export, tmp_path, capsys):
    """A read-only folder failed with the raw "[Errno 30] Read-only file system: '.../.gr00t-export.lock'", where a
    full disk names the folder and says the earlier export is unchanged."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        for path in base_export.iterdir():
            shutil.copy2(path, disk / path.name)
        before = snapshot(disk)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        assert main(export_argv(tiny_checkpoint, disk)) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "[Errno" not in error and "Read-only file system" in error, error
        assert error.endswith(f"; the earlier export in {disk} is unchanged"), error
        assert snapshot(disk) == before
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# --- what serving trusts --------------------------------------------------------------------------


def test_export_records_size_and_sha256_of_every_file(base_export):
    import hashlib

    files = metadata_of(base_export)["submodules"]["dit"]["files"]
    data = (base_export / "dit_fp32.onnx").read_bytes()
    assert files == {"dit_fp32.onnx": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}


def test_serving_refuses_a_file_copied_from_another_export(policy, earlier, other_export):
    shutil.copy2(other_export / "dit_fp32.onnx", earlier / "dit_fp32.onnx")  # keeps the mtime of a real copy
    with pytest.raises(BackendError, match="dit_fp32.onnx is not the file this export wrote") as info:
        apply_inference_mode(policy, "onnxruntime", onnx_dir=earlier)
    assert "\n" not in str(info.value) and str(earlier / "dit_fp32.onnx") in str(info.value)


def test_serving_refuses_an_export_without_file_hashes(policy, earlier):
    metadata = metadata_of(earlier)
    del metadata["submodules"]["dit"]["files"]
    (earlier / EXPORT_METADATA).write_text(json.dumps(metadata))
    with pytest.raises(BackendError, match="records no file hashes.*re-export it"):
        apply_inference_mode(policy, "onnxruntime", onnx_dir=earlier)


def test_serving_an_intact_export_still_works(policy, earlier):
    assert apply_inference_mode(Gr00tPolicy(policy.checkpoint_dir, TAG, device="cpu", dtype="fp32"),
                                "onnxruntime", onnx_dir=earlier)


def _set(path, value):
    def change(metadata):
        target = metadata
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return metadata
    return change


def _drop_file(metadata):
    del metadata["submodules"]["dit"]["file"]
    return metadata


def _add_submodule(metadata):
    metadata["submodules"]["foo"] = dict(metadata["submodules"]["dit"])
    return metadata


@pytest.mark.parametrize("change, key", [
    (lambda metadata: [], "JSON object"),
    (_set(["submodules"], None), "submodules"),
    (_set(["submodules"], {}), "submodules"),
    (_set(["model_identity"], "abc"), "model_identity"),
    (_drop_file, "submodules.dit.file"),
    (_set(["submodules", "dit", "file"], "../other/dit_fp32.onnx"), "submodules.dit.file"),
    (_set(["submodules", "dit", "file"], "/tmp/dit_fp32.onnx"), "submodules.dit.file"),
    (_add_submodule, "foo"),
    (_set(["submodules", "dit", "files"], {"../dit_fp32.onnx": {"size": 1, "sha256": "0"}}), "submodules.dit.files"),
], ids=["list", "submodules-null", "submodules-empty", "identity-string", "no-file", "file-escapes", "file-absolute",
        "unknown-submodule", "files-escape"])
def test_malformed_metadata_is_refused_in_one_line_naming_file_and_key(policy, earlier, change, key):
    (earlier / EXPORT_METADATA).write_text(json.dumps(change(metadata_of(earlier))))
    with pytest.raises(BackendError) as info:
        apply_inference_mode(policy, "onnxruntime", onnx_dir=earlier)
    message = str(info.value)
    assert "\n" not in message and str(earlier / EXPORT_METADATA) in message and key in message


def test_binary_metadata_is_refused_naming_the_file(policy, earlier):
    (earlier / EXPORT_METADATA).write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(BackendError, match="is not valid JSON") as info:
        apply_inference_mode(policy, "onnxruntime", onnx_dir=earlier)
    assert str(earlier / EXPORT_METADATA) in str(info.value)


def test_external_data_files_get_the_mode_of_their_graph(policy, observation, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 0)
    export_policy(policy, observation, tmp_path, mode="dit_only", precision="fp32")
    graph, data = tmp_path / "dit_fp32.onnx", tmp_path / "dit_fp32.onnx.data"
    assert data.is_file() and data.stat().st_mode & 0o777 == graph.stat().st_mode & 0o777
    assert sorted(metadata_of(tmp_path)["submodules"]["dit"]["files"]) == ["dit_fp32.onnx", "dit_fp32.onnx.data"]


def test_serving_refuses_an_export_whose_metadata_does_not_list_the_external_data_beside_its_graph(
        policy, observation, tmp_path, monkeypatch):
    # An edited metadata left dit_fp32.onnx.data unchecked: with its tail zeroed it served other actions.
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 0)
    export_policy(policy, observation, tmp_path, mode="dit_only", precision="fp32")
    data = tmp_path / "dit_fp32.onnx.data"
    with open(data, "r+b") as stream:
        stream.seek(data.stat().st_size // 2)
        stream.write(b"\0" * (data.stat().st_size - data.stat().st_size // 2))
    metadata = metadata_of(tmp_path)
    del metadata["submodules"]["dit"]["files"]["dit_fp32.onnx.data"]
    (tmp_path / EXPORT_METADATA).write_text(json.dumps(metadata))
    with pytest.raises(BackendError) as info:
        apply_inference_mode(Gr00tPolicy(policy.checkpoint_dir, TAG, device="cpu", dtype="fp32"), "onnxruntime",
                             onnx_dir=tmp_path)
    assert str(info.value) == (
        f"{tmp_path / EXPORT_METADATA}: submodules.dit.files does not list 'dit_fp32.onnx.data', the external data of "
        "dit_fp32.onnx, so its sha256 cannot be checked; expected every file of the graph listed: re-export it with "
        "`gr00t-server export`")


def test_a_stray_data_file_beside_an_inline_export_is_no_concern_of_its_graph(policy, observation, tmp_path):
    # An older export's dit_fp32.onnx.data left beside a fresh inline one (cp -r over it) was taken for the graph's
    # unlisted external data, and the export refused; the graph names no such file, and ONNX Runtime never reads it.
    export_policy(policy, observation, tmp_path, mode="dit_only", precision="fp32")
    assert "dit_fp32.onnx.data" not in metadata_of(tmp_path)["submodules"]["dit"]["files"]
    (tmp_path / "dit_fp32.onnx.data").write_bytes(b"\0" * 4096)
    for name in ("output", "x", "model", "onnx.data"):  # a user's files, named as words the graph's bytes hold
        (tmp_path / name).write_text("a log of verify, say")
    apply_inference_mode(Gr00tPolicy(policy.checkpoint_dir, TAG, device="cpu", dtype="fp32"), "onnxruntime",
                         onnx_dir=tmp_path)


@pytest.mark.parametrize("location", ["weights.bin", "sub/weights.bin"])
def test_serving_refuses_an_export_whose_graph_reads_external_data_its_metadata_does_not_list(
        policy, observation, tmp_path, monkeypatch, location):
    import onnx

    from gr00t_server.backends.common import file_digest

    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 0)
    export_policy(policy, observation, tmp_path, mode="dit_only", precision="fp32")
    graph = tmp_path / "dit_fp32.onnx"
    model = onnx.load(str(graph), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(graph))
    (tmp_path / location).parent.mkdir(exist_ok=True)
    (tmp_path / "dit_fp32.onnx.data").rename(tmp_path / location)
    metadata = metadata_of(tmp_path)
    metadata["submodules"]["dit"]["files"] = {graph.name: file_digest(graph)}  # a hand-written, self-consistent record
    (tmp_path / EXPORT_METADATA).write_text(json.dumps(metadata))
    with pytest.raises(BackendError, match=f"submodules.dit.files does not list '{location}', the external data of "
                                           "dit_fp32.onnx.*re-export it"):
        apply_inference_mode(Gr00tPolicy(policy.checkpoint_dir, TAG, device="cpu", dtype="fp32"), "onnxruntime",
                             onnx_dir=tmp_path)


def test_an_output_that_is_a_symlink_loop_is_one_line_not_a_traceback(tmp_path, capsys):
    loop = tmp_path / "loopA"
    loop.symlink_to(tmp_path / "loopB")
    (tmp_path / "loopB").symlink_to(loop)
    assert main(export_argv("unused", loop)) == 2
    assert f"--output {loop} is a symlink loop" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_verify_seed_out_of_range_is_refused_naming_the_flag_before_anything_loads(seed, capsys):
    assert main(["verify", "--model-path", "/nonexistent/m", "--onnx-dir", "/nonexistent/d", "--seed", seed]) == 2
    assert f"--seed must be a whole number from 0 to 4294967295, got {seed}" in capsys.readouterr().err
