"""A results.json another writer puts in an open-loop run's folder meanwhile: kept, never taken for the run's own."""

from __future__ import annotations

import errno
import json
import os

import pytest

from eval.dataset_factory import make_dataset
from gr00t_eval import cli
from gr00t_eval.results import write_results
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server


@pytest.mark.parametrize("content", [
    {"kind": "open_loop", "status": "complete", "aggregated": {"n_trajectories": 7}, "not_run_trajectories": []},
    {"kind": "rollout", "per_episode": [], "aggregated": {}},
], ids=["another-open-loop", "a-rollout"])
def test_the_cli_never_reports_another_writers_results_json_as_its_own(tmp_path, capsys, content):
    """The CLI said "COMPLETE: results.json holds the 7 trajectories scored before the stop" of another run's file (this
    run scored 1 and was not stopped), or, for a file of another shape, hid the real error behind KeyError: status."""
    dataset = make_dataset(tmp_path / "ds", lengths=(12,))
    out = tmp_path / "out"
    other = out / "results.json"

    class OtherWriter(ReplayPolicy):
        def _get_action(self, observation, options=None):
            if not other.exists():  # another writer (an older gr00t-eval, say) puts its results.json there meanwhile
                other.write_text(json.dumps(content))
            return super()._get_action(observation, options)

    with running_server(OtherWriter(dataset, execution_horizon=4)) as server:
        try:
            code = cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--output-dir",
                             str(out), "--steps", "8", "--no-plots"])
        except SystemExit as exc:
            code = exc.code
    output = "\n".join(capsys.readouterr())
    assert code not in (0, None), output
    assert "results.json appeared there during this run" in output, output
    assert "holds the" not in output and "KeyError" not in output, output
    assert json.loads(other.read_text()) == content  # kept


def test_exclusive_results_are_renamed_into_place_where_hard_links_fail(tmp_path, monkeypatch):
    """On a file system without hard links (exFAT, SMB) results.json was written a second time into a new file: a full
    disk left it empty (two copies' room needed). The copy written aside is renamed into place, unless one is there."""
    renamed = []
    real_replace = os.replace

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    def recording_replace(src, dst, *args, **kwargs):
        renamed.append((os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "replace", recording_replace)
    path = tmp_path / "results.json"
    write_results(path, {"status": "complete", "value": 1.5}, exclusive=True)
    assert json.loads(path.read_text()) == {"status": "complete", "value": 1.5}
    assert [dst for _src, dst in renamed] == [str(path)]  # the whole copy, renamed: never written in place
    with pytest.raises(FileExistsError):
        write_results(path, {"status": "complete", "value": 2.5}, exclusive=True)
    assert json.loads(path.read_text())["value"] == 1.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no copy aside left
