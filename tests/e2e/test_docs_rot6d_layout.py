"""The docs describe eef_9d's rot6d as the model reads it, the first two ROWS of the rotation matrix (model.md §3.6):
README's robot example said columns, so a user following it sent the transposed rotation and got wrong relative EEF
actions without an error."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from docs_runner import documents, extract_blocks
from serving import running_server

from gr00t_client import PolicyWrapper
from gr00t_server.processing.normalization import rot6d_to_matrix

class RecordingPolicy(PolicyWrapper):
    """Serves the wrapped policy and keeps every observation it was asked to act on."""

    def __init__(self, policy) -> None:
        super().__init__(policy, strict=False)
        self.observations: List[Dict[str, Any]] = []

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> tuple:
        self.observations.append(observation)
        return self.policy.get_action(observation, options)


def _readme_client_block() -> str:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    return next(block.code for block in extract_blocks(readme) if block.lang == "python" and "eef_9d" in block.code)


def test_no_doc_says_rot6d_is_made_of_rotation_matrix_columns():
    for doc in documents():
        text = " ".join(doc.read_text(encoding="utf-8").split())
        found = re.findall(r"[^.;(]*(?:rotation[- ]matrix columns|columns of the rotation matrix)", text)
        assert not found, f"{doc.name} says rot6d holds columns; the model reads the first two rows: {found}"


def test_readme_client_example_sends_the_rows_of_its_rotation_as_rot6d(tmp_path):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import make_test_checkpoint

    checkpoint = make_test_checkpoint(tmp_path / "ckpt", embodiment_tags=("new_embodiment",))
    policy = RecordingPolicy(Gr00tPolicy(checkpoint, "new_embodiment", device="cpu"))
    script = tmp_path / "readme_client.py"
    code = _readme_client_block().replace("gpu-box", "127.0.0.1")
    with running_server(policy, port=0, api_token="secret") as server:  # a free port: README's 5555 may be taken
        script.write_text(re.sub(r"\b5555\b", str(server.port), code), encoding="utf-8")
        namespace = runpy.run_path(str(script), run_name="__main__")
    rotation = np.asarray(namespace["rotation"], np.float64)
    assert not np.allclose(rotation, rotation.T), "README's example rotation must show a transposed layout"
    sent = np.asarray(policy.observations[-1]["state"]["eef_9d"], np.float64)[0, 0]
    np.testing.assert_allclose(rot6d_to_matrix(sent[3:9]), rotation, atol=1e-6,
                               err_msg="the model reads README's eef_9d as another rotation than the example's")
