"""The TensorRT engine folder's life cycle, on CPU: what build-engine writes, and what serving accepts. TensorRT
itself needs a GPU, so its compiler is replaced by a stand-in whose "engine" is the sha256 of the ONNX file it was
built from (the folder handling, hashing and checks under test are the real ones; tests/server/test_backends_gpu.py
builds real engines on a GPU). An interrupted rebuild left engines of two exports under the first's metadata, which
serving accepted; an ONNX folder with another export's file was built from; `"engines": {}` served PyTorch under the
tensorrt label."""

from __future__ import annotations

import hashlib
import json
import shutil
import types

import pytest

from gr00t_server.backends import BackendError
from gr00t_server.backends import tensorrt_backend as trt_backend
from gr00t_server.backends.common import ENGINE_METADATA
from gr00t_server.backends.export import export_policy
from gr00t_server.policies.gr00t_policy import Gr00tPolicy
from gr00t_server.test_checkpoint import example_observation, make_test_checkpoint

pytest.importorskip("onnxruntime")

TAG = "new_embodiment"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Action-head exports (4 sub-modules) of two checkpoints: A and B."""
    root = tmp_path_factory.mktemp("trt")
    made = {}
    for name, seed in (("a", 0), ("b", 1)):
        checkpoint = make_test_checkpoint(root / f"ckpt_{name}", seed=seed)
        policy = Gr00tPolicy(checkpoint, TAG, device="cpu", dtype="fp32")
        export_policy(policy, example_observation(checkpoint, TAG, batch_size=1, seed=1), root / f"onnx_{name}",
                      mode="action_head")
        made[name] = root / f"onnx_{name}"
    return made


@pytest.fixture
def stand_in(monkeypatch):
    """TensorRT's import and compiler replaced; `interrupt_at` makes the build of that ONNX file raise Ctrl-C."""
    state = {"interrupt_at": None}

    def build_engine(onnx_path, engine_path, shapes, precision, workspace_mib=8192):
        if state["interrupt_at"] and onnx_path.name.startswith(state["interrupt_at"]):
            raise KeyboardInterrupt
        engine_path.write_bytes(b"ENGINE " + hashlib.sha256(onnx_path.read_bytes()).hexdigest().encode())
        return {"file": engine_path.name, "onnx_file": onnx_path.name, "build_seconds": 0.0, "strongly_typed": True,
                "profile": {}}

    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.9.0"))
    monkeypatch.setattr(trt_backend, "gpu_identity", lambda device=None: {"gpu_name": "H200", "compute_capability": "90"})
    monkeypatch.setattr(trt_backend, "build_engine", build_engine)
    return state


def engines_of(folder):
    return {path.name: path.read_bytes() for path in folder.glob("*.engine")}


def test_a_built_folder_records_each_engine_and_passes_its_checks(exports, stand_in, tmp_path):
    metadata = trt_backend.build_engines(exports["a"], tmp_path / "engines", precision="bf16")
    assert set(metadata["engines"]) == set(metadata["export_metadata"]["submodules"])
    assert all(len(info["sha256"]) == 64 for info in metadata["engines"].values())
    assert metadata["precision"] == "fp32"  # strongly typed: the export's types decide, not the flag
    trt_backend.check_engine_files(metadata, tmp_path / "engines")
    assert not list((tmp_path / "engines").glob(".gr00t-engines-*"))


def test_an_interrupted_rebuild_leaves_the_earlier_engines_whole(exports, stand_in, tmp_path):
    folder = tmp_path / "engines"
    trt_backend.build_engines(exports["a"], folder)
    before, metadata_before = engines_of(folder), (folder / ENGINE_METADATA).read_text()
    stand_in["interrupt_at"] = "action_encoder"  # built after action_decoder (alphabetical)
    with pytest.raises(KeyboardInterrupt):
        trt_backend.build_engines(exports["b"], folder)
    assert engines_of(folder) == before and (folder / ENGINE_METADATA).read_text() == metadata_before
    assert not list(folder.glob(".gr00t-engines-*"))
    trt_backend.check_engine_files(json.loads(metadata_before), folder)


def test_a_killed_builds_staging_is_removed_even_where_its_pid_is_alive(exports, stand_in, tmp_path):
    """In a container every build is PID 1: a killed one's staging folder (GBs of engines on a real model) was judged
    alive by its pid and kept for ever."""
    folder = tmp_path / "engines"
    folder.mkdir()
    killed = folder / ".gr00t-engines-1-0123456789abcdef-xyz"  # PID 1 is alive here too
    older = folder / ".gr00t-engines-1-xyz"  # named before builds carried a token
    for stale in (killed, older):
        stale.mkdir()
        (stale / "action_decoder.engine").write_bytes(b"half built")
    trt_backend.build_engines(exports["a"], folder)
    assert not killed.exists() and not older.exists()
    trt_backend.check_engine_files(json.loads((folder / ENGINE_METADATA).read_text()), folder)


def test_a_second_build_into_a_folder_being_built_into_is_refused_at_once(exports, stand_in, tmp_path):
    """Two builds into one folder (two containers: their pids invisible to each other) removed each other's staging
    and swapped their engines in over each other."""
    from gr00t_server.backends.export_dir import export_lock

    folder = tmp_path / "engines"
    folder.mkdir()
    running = folder / f".gr00t-engines-{2**22 + 7}-abcdef0123456789-xyz"  # the running build's, its pid not visible
    running.mkdir()
    with export_lock(folder):  # held by the running build (an flock: across processes and containers)
        with pytest.raises(BackendError, match=f"another TensorRT engine build into {folder} is running; wait for it "
                                               "to finish, or choose another --engine-dir"):
            trt_backend.build_engines(exports["a"], folder)
        assert running.is_dir() and not (folder / ENGINE_METADATA).exists()
    trt_backend.build_engines(exports["a"], folder)  # once it is done, the folder is free and its staging stale
    assert not running.exists() and not list(folder.glob(".gr00t-engines-*"))


def test_an_engine_of_another_build_is_refused(exports, stand_in, tmp_path):
    """The mix an interrupted rebuild made before: another export's engine under the earlier metadata."""
    folder, other = tmp_path / "engines", tmp_path / "other"
    metadata = trt_backend.build_engines(exports["a"], folder)
    trt_backend.build_engines(exports["b"], other)
    shutil.copy(other / metadata["engines"]["action_decoder"]["file"], folder)
    with pytest.raises(BackendError, match="is not the engine engine_metadata.json records"):
        trt_backend.check_engine_files(metadata, folder)


@pytest.mark.parametrize("engines", [{}, "drop-one"])
def test_metadata_listing_fewer_engines_than_the_export_is_refused(exports, stand_in, tmp_path, engines):
    metadata = trt_backend.build_engines(exports["a"], tmp_path / "engines")
    metadata["engines"] = {} if engines == {} else dict(list(metadata["engines"].items())[1:])
    with pytest.raises(BackendError, match="lists engines .* and the export has the sub-modules"):
        trt_backend.check_engine_files(metadata, tmp_path / "engines")


def test_metadata_of_an_older_build_without_hashes_asks_for_a_rebuild(exports, stand_in, tmp_path):
    metadata = trt_backend.build_engines(exports["a"], tmp_path / "engines")
    for info in metadata["engines"].values():
        info.pop("sha256")
    with pytest.raises(BackendError, match="records no engine hashes .* rebuild them with build-engine"):
        trt_backend.check_engine_files(metadata, tmp_path / "engines")


def test_an_onnx_folder_holding_another_exports_file_is_not_built_from(exports, stand_in, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(exports["a"], mixed)
    shutil.copy(exports["b"] / "dit_fp32.onnx", mixed / "dit_fp32.onnx")
    with pytest.raises(BackendError, match="dit_fp32.onnx is not the file this export wrote"):
        trt_backend.build_engines(mixed, tmp_path / "engines")
    assert not (tmp_path / "engines" / ENGINE_METADATA).exists()


@pytest.fixture(scope="module")
def libero_export(exports, tmp_path_factory):
    """An action-head export of checkpoint A traced for libero_sim (not the checkpoint's default tag) on 224x320
    frames (not the default 256x256)."""
    checkpoint = exports["a"].parent / "ckpt_a"
    policy = Gr00tPolicy(checkpoint, "libero_sim", device="cpu", dtype="fp32")
    out = tmp_path_factory.mktemp("onnx_libero")
    export_policy(policy, example_observation(checkpoint, "libero_sim", batch_size=1, seed=1, image_size=(224, 320)),
                  out, mode="action_head")
    return out


def test_verify_reads_the_exports_tag_frame_size_and_identity_from_the_engine_folders_metadata(libero_export, stand_in,
                                                                                             tmp_path):
    """build-engine nests the export's metadata under "export_metadata"; verify --engine-dir read the top level, so it
    verified the checkpoint's default tag on 256x256 frames instead of the export's (a full_pipeline engine made with
    --image-size could never be verified)."""
    from gr00t_server.backends.common import read_json

    folder = tmp_path / "engines"
    trt_backend.build_engines(libero_export, folder, max_batch_size=4)
    read = trt_backend.engine_export_metadata(read_json(folder / ENGINE_METADATA, "engine metadata"))
    exported = json.loads((libero_export / "export_metadata.json").read_text())
    assert read["embodiment_tag"] == "libero_sim"
    assert read["sample_image_size"] == [224, 320]
    assert read["model_identity"] == exported["model_identity"] and read["model_version"] == exported["model_version"]
    assert (read["precision"], read["max_batch_size"]) == ("fp32", 4)  # the engines' own, from the top level


def test_verify_reads_engine_metadata_of_older_files_from_its_top_level():
    older = {"precision": "fp16", "max_batch_size": 2, "engines": {}, "embodiment_tag": "libero_sim",
             "sample_image_size": [480, 640]}
    read = trt_backend.engine_export_metadata(older)
    assert (read["embodiment_tag"], read["sample_image_size"]) == ("libero_sim", [480, 640])
    assert (read["precision"], read["max_batch_size"]) == ("fp16", 2)


def test_verify_refuses_a_backend_that_swapped_nothing(tiny_checkpoint):
    from gr00t_server.backends.verify import verify_policy

    policy = Gr00tPolicy(tiny_checkpoint, TAG, device="cpu", dtype="fp32")
    with pytest.raises(BackendError, match="swapped no sub-module"):
        verify_policy(policy, example_observation(tiny_checkpoint, TAG, batch_size=1), lambda _: [], "tensorrt")


def test_a_tensorrt_that_is_installed_but_cannot_load_its_libraries_is_not_reported_as_missing(tmp_path, monkeypatch):
    package = tmp_path / "tensorrt"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise ImportError('libnvinfer.so.10: cannot open shared object file: No such file or directory')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "tensorrt", raising=False)
    with pytest.raises(BackendError) as caught:
        trt_backend.import_tensorrt()
    assert "installed but failed to import" in str(caught.value)
    assert "libnvinfer.so.10" in str(caught.value)
    assert "pip install" not in str(caught.value)


def test_a_missing_tensorrt_names_the_extras_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if "tensorrt" not in p])
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)  # import raises ModuleNotFoundError for it
    with pytest.raises(BackendError, match=r"needs TensorRT 10 \(pip install 'gr00t-server\[tensorrt-cu12\]'"):
        trt_backend.import_tensorrt()
