"""verify checks every embodiment an export serves: an ONNX export takes `embodiment_id` as an input, and `serve` runs
it for any tag of the checkpoint, but verify compared only the tag recorded at export. An action_head export whose
embodiment-conditioned graphs ignored their id (as an exporter that constant-folded the traced id would make them)
passed verify, and was wrong for every other tag."""

import json
import re
import shutil

import numpy as np
import pytest

from gr00t_server.backends.common import EXPORT_METADATA, file_digest
from gr00t_server.backends.export import export_checkpoint
from gr00t_server.cli import main
from gr00t_server.test_checkpoint import make_test_checkpoint

pytest.importorskip("onnxruntime")

EMBODIMENT_CONDITIONED = ("state_encoder", "action_encoder", "action_decoder")
UNSERVED_TAG = "my_other_robot"  # listed in embodiment_id.json, without modality configs or statistics


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny checkpoint (new_embodiment id 10, libero_sim id 2) whose embodiment_id.json also lists a tag it has
    no processor config for, as a training run's whole table does."""
    folder = make_test_checkpoint(tmp_path_factory.mktemp("every_embodiment") / "ckpt", seed=0)
    ids = json.loads((folder / "embodiment_id.json").read_text())
    (folder / "embodiment_id.json").write_text(json.dumps({**ids, UNSERVED_TAG: 5}))
    return folder


@pytest.fixture(scope="module")
def head_export(checkpoint, tmp_path_factory):
    """An fp32 action_head export traced for new_embodiment."""
    out = tmp_path_factory.mktemp("onnx_head")
    export_checkpoint(checkpoint, out, mode="action_head", precision="fp32", device="cpu")
    return out


def embodiment_blind_copy(export, folder, traced_id):
    """A copy of an action_head export whose embodiment-conditioned graphs use `traced_id` whatever `embodiment_id`
    they are given; its file hashes re-recorded as export records them."""
    import onnx
    from onnx import helper, numpy_helper

    shutil.copytree(export, folder)
    metadata = json.loads((folder / EXPORT_METADATA).read_text())
    for name in EMBODIMENT_CONDITIONED:
        path = folder / metadata["submodules"][name]["file"]
        model = onnx.load(str(path))
        for node in model.graph.node:
            node.input[:] = ["embodiment_id_frozen" if given == "embodiment_id" else given for given in node.input]
        model.graph.initializer.extend([numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
                                        numpy_helper.from_array(np.array(traced_id, dtype=np.int64), "traced_id")])
        model.graph.node.insert(0, helper.make_node("Mul", ["embodiment_id", "zero"], ["embodiment_id_zero"]))
        model.graph.node.insert(1, helper.make_node("Add", ["embodiment_id_zero", "traced_id"], ["embodiment_id_frozen"]))
        onnx.save(model, str(path))
        metadata["submodules"][name]["files"] = {file: file_digest(folder / file)
                                                 for file in metadata["submodules"][name]["files"]}
    (folder / EXPORT_METADATA).write_text(json.dumps(metadata))
    return folder


def verify(checkpoint, export, capsys):
    code = main(["verify", "--model-path", str(checkpoint), "--onnx-dir", str(export), "--device", "cpu",
                 "--log-level", "WARNING"])
    return code, capsys.readouterr().out


def row_of(report_text, label):
    """The report's row of `label`, whatever denoising step it names as its worst."""
    row = re.compile(rf"{re.escape(label)}( \(worst at [^)]*\))?  ")
    return next(line for line in report_text.splitlines() if row.match(line))


def test_verify_fails_an_export_that_ignores_the_embodiment_id_of_the_checkpoints_other_tags(
        checkpoint, head_export, tmp_path, capsys):
    blind = embodiment_blind_copy(head_export, tmp_path / "onnx_embodiment_blind", traced_id=10)
    code, out = verify(checkpoint, blind, capsys)
    assert code == 1, out
    assert "embodiment: new_embodiment" in out  # the full action pass stays on the tag recorded at export
    for name in EMBODIMENT_CONDITIONED:
        assert row_of(out, name).endswith("PASS"), out  # the traced id is right
        assert row_of(out, f"{name} (embodiment libero_sim)").endswith("FAIL"), out
    assert "overall (onnxruntime): FAIL" in out


def test_verify_passes_a_good_export_for_every_served_tag_and_names_the_tags_it_skipped(checkpoint, head_export,
                                                                                      capsys):
    code, out = verify(checkpoint, head_export, capsys)
    assert code == 0, out
    for name in EMBODIMENT_CONDITIONED:
        assert row_of(out, f"{name} (embodiment libero_sim)").endswith("PASS"), out
    assert not any(UNSERVED_TAG in line for line in out.splitlines() if line.endswith(("PASS", "WARN", "FAIL"))), out
    note = next(line for line in out.splitlines() if UNSERVED_TAG in line)
    assert "not checked" in note and "serve" in note, out
