"""Results record which policy they evaluated, and results of different policies are never combined: merge refuses
shards run against different policies, a resumed run refuses a server that now serves another one, and a resumed
batch job starts over. The same policy served by another server (another copy, another port) is the same policy.
Real replay servers of real datasets on loopback, the real CLI."""

from __future__ import annotations

import json
import shutil

import pytest

from eval.dataset_factory import copy_with_actions_negated, make_dataset
from eval.scale_fixtures import Checkpoint, ConstantPolicy, sim_replay_policy
from gr00t_client import PolicyClient
from gr00t_eval import cli
from gr00t_eval.batch import Job, PolicyServerAddress, connect, run_batch
from gr00t_eval.policy_identity import record_from_info, same_policy
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server

pytest.importorskip("av")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    first = make_dataset(root / "first", lengths=(6, 6, 6, 6), cameras=())
    copy = root / "copy_of_first"
    shutil.copytree(first, copy)
    other = make_dataset(root / "other", lengths=(6, 6, 6, 7), cameras=())  # another recording
    return first, copy, other


def replay(path):
    return ReplayPolicy(str(path), execution_horizon=4)


ROLLOUT = ["--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1", "--vectorization", "sync",
           "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--no-video"]


def shard(port, out, index):
    return cli.main(["rollout", *ROLLOUT, "--policy-client-port", str(port), "--shard", f"{index}/2", "--output-dir", str(out)])


def test_the_identity_of_a_replay_server_follows_its_data_not_its_path(datasets):
    first, copy, other = datasets
    assert replay(first).identity() == replay(copy).identity()
    assert replay(first).identity() != replay(other).identity()
    with running_server(replay(first)) as server:
        with PolicyClient(port=server.port) as client:
            info = client.get_server_info()
    assert info["policy_identity"] == replay(first).identity()
    assert info["policy_identity"]["kind"] == "replay"


def test_replays_of_two_recordings_that_differ_only_in_their_actions_are_two_policies(tmp_path):
    # Same episodes, tasks and meta/ files; the actions negated (a broken sign convention): their results must not pool.
    first = make_dataset(tmp_path / "first", lengths=(6, 6, 6, 6), cameras=())
    negated = copy_with_actions_negated(first, tmp_path / "negated")
    assert replay(first).identity() != replay(negated).identity()
    records = []
    for dataset in (first, negated):
        with running_server(replay(dataset)) as server, PolicyClient(port=server.port) as client:
            records.append(record_from_info(client.get_server_info()))
    assert records[0]["fingerprint"] != records[1]["fingerprint"]
    assert not same_policy(records[0], records[1])


def test_a_resume_against_a_replay_of_the_same_episodes_with_other_actions_is_refused(tmp_path, capsys):
    walk = {"lengths": (6, 6, 6, 6), "cameras": (), "state_dims": {"position": 1}, "action_dims": {"push": 1}}
    recorded = make_dataset(tmp_path / "recorded", **walk)
    negated = copy_with_actions_negated(recorded, tmp_path / "negated")
    copy = shutil.copytree(recorded, tmp_path / "copy")
    out = tmp_path / "run"
    with running_server(sim_replay_policy(recorded, 2)) as a:
        assert cli.main(["rollout", *ROLLOUT, "--output-dir", str(out), "--policy-client-port", str(a.port)]) == 0
    (out / "results.json").unlink()  # as if the run had been killed: a resume must check the server again
    capsys.readouterr()
    with running_server(sim_replay_policy(negated, 2)) as b:
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(b.port)]) == 2
    err = capsys.readouterr().err
    assert f"--resume {out}: the server at" in err and "serve the same checkpoint (or dataset)" in err
    with running_server(sim_replay_policy(copy, 2)) as c:  # the same recording copied elsewhere: the same policy
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(c.port)]) == 0


def test_a_replay_identity_reads_through_symlinked_meta_folders(tmp_path):
    """A v3.0 dataset whose meta/episodes/ is a link (as a dataset cache may lay it out) has the identity of its copy:
    the episode list behind the link is hashed (Path.rglob did not enter it), and a link back up the tree ends."""
    first = make_dataset(tmp_path / "first", layout="v3.0", episodes_per_file=2, lengths=(6, 6, 6), cameras=())
    linked = tmp_path / "linked"
    shutil.copytree(first, linked)
    shutil.rmtree(linked / "meta" / "episodes")
    (linked / "meta" / "episodes").symlink_to(first / "meta" / "episodes", target_is_directory=True)
    (linked / "meta" / "loop").symlink_to(linked / "meta", target_is_directory=True)
    (first / "meta" / "loop").symlink_to(first / "meta", target_is_directory=True)
    assert replay(linked).identity() == replay(first).identity()


def test_shards_of_two_policies_do_not_merge_and_shards_of_one_policy_on_two_servers_do(tmp_path, capsys):
    mixed, same = tmp_path / "mixed", tmp_path / "same"
    with running_server(Checkpoint("a")) as a, running_server(Checkpoint("b")) as b, running_server(Checkpoint("a")) as c:
        assert shard(a.port, mixed, 0) == 0 and shard(b.port, mixed, 1) == 0
        assert shard(a.port, same, 0) == 0 and shard(c.port, same, 1) == 0
    capsys.readouterr()
    assert cli.main(["merge", str(mixed), "--output", str(mixed / "merged.json")]) == 2
    err = capsys.readouterr().err
    assert "results_shard1of2.json was run against another policy than" in err and "checkpoint b" in err
    assert "only shards of one policy merge" in err and not (mixed / "merged.json").exists()
    assert cli.main(["merge", str(same), "--output", str(same / "merged.json")]) == 0
    merged = json.loads((same / "merged.json").read_text())
    assert merged["policy"]["identity"] == {"kind": "test", "checkpoint": "a"}
    assert len(set(merged["merged_servers"])) == 2  # both servers are named, not the first shard's alone


def test_a_resume_against_a_server_of_another_policy_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with running_server(Checkpoint("a")) as a:
        assert cli.main(["rollout", *ROLLOUT, "--output-dir", str(out), "--policy-client-port", str(a.port)]) == 0
    saved = json.loads((out / "run.json").read_text())
    assert saved["policy"]["identity"] == {"kind": "test", "checkpoint": "a"}
    assert json.loads((out / "results.json").read_text())["policy"] == saved["policy"]
    (out / "results.json").unlink()  # as if the run had been killed: a resume must check the server again
    capsys.readouterr()
    with running_server(Checkpoint("b")) as b:
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(b.port)]) == 2
    err = capsys.readouterr().err
    assert f"--resume {out}: the server at" in err and "and this run started against Checkpoint (kind test, checkpoint a" in err
    with running_server(Checkpoint("a")) as c:  # the same checkpoint on another server: the same policy
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(c.port)]) == 0


def test_a_batch_job_resumed_against_another_policy_starts_over(tmp_path, caplog):
    settings = {"n_episodes": 4, "n_envs": 1, "max_episode_steps": 6, "n_action_steps": 2, "vectorization": "sync",
                "seed": 0}
    path = tmp_path / "batch_results.json"
    with running_server(Checkpoint("a")) as a:
        job = Job("walk", "walkto/fast", PolicyServerAddress("127.0.0.1", a.port), settings)
        batch = run_batch([job], path, policy_factory=connect)
    kept = batch["jobs"][0]
    assert kept["status"] == "done" and kept["results"]["policy"]["identity"]["checkpoint"] == "a"
    kept["status"] = "failed"  # a job to run again (its episodes are logged)
    with running_server(Checkpoint("b")) as b:
        job = Job("walk", "walkto/fast", PolicyServerAddress("127.0.0.1", b.port), settings)
        with caplog.at_level("WARNING"):
            batch = run_batch([job], path, policy_factory=connect, previous={"jobs": [kept]})
    record = batch["jobs"][0]
    assert record["resumed_episodes"] == 0  # none of the other policy's episodes were kept
    assert "running the job from the start" in caplog.text
    assert (tmp_path / "jobs" / "walk" / "episodes.replaced.jsonl").is_file()
    assert record["results"]["policy"]["identity"]["checkpoint"] == "b"


def test_servers_of_one_checkpoint_for_two_embodiments_are_refused_naming_the_tags(tmp_path):
    """Ray's refusal showed two identical checkpoint hashes and told to serve the same checkpoint, which they did: the
    servers differed in --embodiment-tag only. The message names each server's tag and the flag to align."""
    from eval.scale_fixtures import run_cli
    from gr00t_eval.cli_errors import UsageError

    with running_server(Checkpoint("a"), embodiment_tag="new_embodiment") as first, \
            running_server(Checkpoint("a"), embodiment_tag="simpler_env_widowx") as second:
        hosts = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        with pytest.raises(UsageError) as refused:
            run_cli(["rollout", *ROLLOUT, "--ray-address", "local", "--policy-client-host", hosts, "--ray-shards", "2",
                     "--output-dir", str(tmp_path / "run")])
    message = str(refused.value)
    assert f"127.0.0.1:{first.port}: Checkpoint for new_embodiment (" in message
    assert f"127.0.0.1:{second.port}: Checkpoint for simpler_env_widowx (" in message
    assert message.endswith("serve the same --embodiment-tag on every server")


def silent(server):
    """`server` made to answer get_server_info with an error, as a reference server (or one that cannot say) does."""
    def refuse():
        raise ValueError("Unknown endpoint: get_server_info")

    server.register_endpoint("get_server_info", refuse, requires_input=False)
    return server


def test_a_resume_against_a_server_that_does_not_say_which_policy_it_serves_is_refused(tmp_path, capsys):
    """It was accepted without a word: the episodes of whatever it served were pooled with the first attempt's into
    one success rate, results.json said "policy": null, exit 0."""
    out = tmp_path / "run"
    with running_server(Checkpoint("a")) as a:
        assert cli.main(["rollout", *ROLLOUT, "--output-dir", str(out), "--policy-client-port", str(a.port)]) == 0
    (out / "results.json").unlink()  # as if the run had been killed
    capsys.readouterr()
    with running_server(Checkpoint("b")) as b:
        silent(b)
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(b.port)]) == 2
    err = capsys.readouterr().err
    assert f"the server at 127.0.0.1:{b.port} did not say which policy it serves" in err
    assert "this run's 4 earlier episodes were scored against Checkpoint (kind test, checkpoint a" in err
    assert not (out / "results.json").exists()


def test_a_batch_job_resumed_against_a_server_that_does_not_say_starts_over(tmp_path, caplog):
    settings = {"n_episodes": 4, "n_envs": 1, "max_episode_steps": 6, "n_action_steps": 2, "vectorization": "sync",
                "seed": 0}
    path = tmp_path / "batch_results.json"
    with running_server(Checkpoint("a")) as a:
        batch = run_batch([Job("walk", "walkto/fast", PolicyServerAddress("127.0.0.1", a.port), settings)], path,
                          policy_factory=connect)
    kept = batch["jobs"][0]
    kept["status"] = "failed"  # a job to run again (its episodes are logged)
    with running_server(Checkpoint("b")) as b:
        silent(b)
        with caplog.at_level("WARNING"):
            batch = run_batch([Job("walk", "walkto/fast", PolicyServerAddress("127.0.0.1", b.port), settings)], path,
                              policy_factory=connect, previous={"jobs": [kept]})
    assert batch["jobs"][0]["resumed_episodes"] == 0
    assert "its server did not say which policy it serves" in caplog.text and "from the start" in caplog.text


class Computing(Checkpoint):
    """Checkpoint `name` computed in `dtype` by `inference_mode`, as a Gr00tPolicy reports it (runtime())."""

    def __init__(self, name, dtype, inference_mode="pytorch"):
        super().__init__(name)
        self.dtype, self.inference_mode = dtype, inference_mode

    def runtime(self):  # dtype None: one that reports nothing (an older server's Gr00tPolicy)
        return {} if self.dtype is None else {"dtype": self.dtype, "device": "cpu", "inference_mode": self.inference_mode}


def test_a_run_records_the_dtype_and_inference_mode_that_computed_its_actions(tmp_path):
    out = tmp_path / "run"
    with running_server(Computing("a", "bfloat16")) as a:
        assert cli.main(["rollout", *ROLLOUT, "--output-dir", str(out), "--policy-client-port", str(a.port)]) == 0
    saved = json.loads((out / "run.json").read_text())
    assert saved["policy"]["runtime"] == {"dtype": "bfloat16", "device": "cpu", "inference_mode": "pytorch"}
    assert json.loads((out / "results.json").read_text())["policy"] == saved["policy"]


@pytest.mark.parametrize("restarted", [Computing("a", "float16"), Computing("a", "bfloat16", "onnxruntime")],
                         ids=["other_dtype", "other_inference_mode"])
def test_a_resume_against_the_same_checkpoint_computed_otherwise_is_refused_naming_both(tmp_path, capsys, restarted):
    out = tmp_path / "run"
    with running_server(Computing("a", "bfloat16")) as a:
        assert cli.main(["rollout", *ROLLOUT, "--output-dir", str(out), "--policy-client-port", str(a.port)]) == 0
    (out / "results.json").unlink()  # as if the run had been killed
    capsys.readouterr()
    with running_server(restarted) as b:
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(b.port)]) == 2
    err = capsys.readouterr().err
    assert f"--resume {out}: the server at" in err
    assert f"dtype {restarted.dtype}, inference mode {restarted.inference_mode}" in err
    assert "dtype bfloat16, inference mode pytorch" in err


def test_a_resume_with_no_runtime_on_either_side_is_the_same_policy(tmp_path):
    """An older run (no runtime recorded) or server (none reported) is matched on its identity, as before."""
    older_run, older_server = tmp_path / "older_run", tmp_path / "older_server"
    with running_server(Computing("a", "bfloat16")) as a:
        assert cli.main(["rollout", *ROLLOUT, "--output-dir", str(older_run), "--policy-client-port", str(a.port)]) == 0
    saved = json.loads((older_run / "run.json").read_text())
    saved["policy"].pop("runtime", None)  # as a run.json written before runtimes were recorded
    (older_run / "run.json").write_text(json.dumps(saved))
    with running_server(Computing("a", "float16")) as b:
        assert cli.main(["rollout", *ROLLOUT, "--output-dir", str(older_server), "--policy-client-port", str(b.port)]) == 0
    for out in (older_run, older_server):
        (out / "results.json").unlink()
    with running_server(Computing("a", "float32")) as c:
        assert cli.main(["rollout", "--resume", str(older_run), "--policy-client-port", str(c.port)]) == 0
    with running_server(Computing("a", None)) as d:
        assert cli.main(["rollout", "--resume", str(older_server), "--policy-client-port", str(d.port)]) == 0


def without_runtime(out, name):
    """`out`'s file `name` as written before runtimes were recorded (an older gr00t-eval, or an older server)."""
    saved = json.loads((out / name).read_text())
    saved["policy"].pop("runtime", None)
    (out / name).write_text(json.dumps(saved))


def test_a_resume_of_a_run_recorded_without_runtime_records_the_servers_and_holds_a_later_resume_to_it(tmp_path, capsys):
    out = tmp_path / "run"
    with running_server(Computing("a", "float32")) as a:
        assert cli.main(["rollout", *ROLLOUT, "--output-dir", str(out), "--policy-client-port", str(a.port)]) == 0
    without_runtime(out, "run.json")
    (out / "results.json").unlink()  # as if the run had been killed
    with running_server(Computing("a", "float32")) as b:  # accepted: the run had nothing to compare
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(b.port)]) == 0
    assert json.loads((out / "run.json").read_text())["policy"]["runtime"]["dtype"] == "float32"
    (out / "results.json").unlink()
    capsys.readouterr()
    with running_server(Computing("a", "bfloat16")) as c:
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(c.port)]) == 2
    assert "dtype bfloat16 on it and float32 in this run" in capsys.readouterr().err


def test_a_merge_of_a_shard_recorded_without_runtime_and_one_with_it_keeps_the_record_with_it(tmp_path):
    out = tmp_path / "run"
    with running_server(Computing("a", "float32")) as a:
        assert shard(a.port, out, 0) == 0 and shard(a.port, out, 1) == 0
    without_runtime(out, "results_shard0of2.json")
    assert cli.main(["merge", str(out), "--output", str(out / "merged.json")]) == 0
    merged = json.loads((out / "merged.json").read_text())
    assert merged["policy"]["runtime"]["dtype"] == "float32"  # a later resume or merge is held to fp32


def test_a_resume_refused_only_for_the_dtype_names_the_dtypes_first_and_the_flag_to_serve(tmp_path, capsys):
    out = tmp_path / "run"
    with running_server(Computing("a", "float32")) as a:
        assert cli.main(["rollout", *ROLLOUT, "--output-dir", str(out), "--policy-client-port", str(a.port)]) == 0
    (out / "results.json").unlink()  # as if the run had been killed
    capsys.readouterr()
    with running_server(Computing("a", "bfloat16", "onnxruntime")) as b:
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(b.port)]) == 2
    err = capsys.readouterr().err
    assert (f"--resume {out}: the server at 127.0.0.1:{b.port} computes this run's policy otherwise: dtype bfloat16 "
            "on it and float32 in this run, inference mode onnxruntime on it and pytorch in this run;") in err
    assert "restart it with --dtype float32 --inference-mode pytorch to continue the run" in err
    assert "serve the same checkpoint" not in err


def test_shards_of_one_checkpoint_in_two_dtypes_are_refused_naming_the_dtypes_first_and_the_flag(tmp_path, capsys):
    out = tmp_path / "run"
    with running_server(Computing("a", "float32")) as a, running_server(Computing("a", "bfloat16")) as b:
        assert shard(a.port, out, 0) == 0 and shard(b.port, out, 1) == 0
    capsys.readouterr()
    assert cli.main(["merge", str(out), "--output", str(out / "merged.json")]) == 2
    err = capsys.readouterr().err
    first, second = out / "results_shard0of2.json", out / "results_shard1of2.json"
    assert (f"{second} was run against {first}'s policy computed otherwise: dtype bfloat16 in that shard and float32 "
            f"in {first};") in err
    assert "rerun that shard against a server started with --dtype float32" in err
    assert "the same checkpoint or dataset" not in err and not (out / "merged.json").exists()


def test_two_records_without_a_fingerprint_are_not_taken_for_one_policy():
    """Every record names a fingerprint; two without one (a hand-made or damaged run file) matched whatever they
    held, so a resume against another checkpoint passed its policy check."""
    first = {"class": "Gr00tPolicy", "identity": {"kind": "gr00t", "weights": "a"}}
    second = {"class": "Gr00tPolicy", "identity": {"kind": "gr00t", "weights": "b"}}
    assert not same_policy(first, second)


UNPINNED = "reports no checkpoint identity"


def unpinned_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and UNPINNED in r.getMessage()]


def test_a_rollout_against_a_server_that_reports_no_checkpoint_identity_warns_once_that_a_restart_goes_unnoticed(
        tmp_path, caplog):
    """An older gr00t-server reports no policy_identity: a restart with another checkpoint of the same configs mid-run
    was accepted without a word, its episodes scored as this run's (status complete)."""
    with running_server(ConstantPolicy()) as older, caplog.at_level("WARNING"):  # no identity(): as an older server's
        assert cli.main(["rollout", *ROLLOUT, "--output-dir", str(tmp_path / "run"),
                         "--policy-client-port", str(older.port)]) == 0
    warned = unpinned_warnings(caplog)
    assert len(warned) == 1, warned
    assert f"127.0.0.1:{older.port}" in warned[0] and "restart with another checkpoint" in warned[0]
    assert "cannot be detected" in warned[0] and "upgrade gr00t-server" in warned[0]


def test_a_rollout_against_a_server_that_reports_its_checkpoint_identity_gives_no_such_warning(tmp_path, caplog):
    with running_server(Checkpoint("a")) as current, caplog.at_level("WARNING"):
        assert cli.main(["rollout", *ROLLOUT, "--output-dir", str(tmp_path / "run"),
                         "--policy-client-port", str(current.port)]) == 0
    assert unpinned_warnings(caplog) == []


def test_a_merge_of_shards_whose_records_hold_no_checkpoint_identity_warns_naming_them(tmp_path, capsys, caplog):
    """Shards run against two older servers serving two checkpoints of the same configs were merged as one policy's
    without a word (status complete, policy.identity None)."""
    out = tmp_path / "shards"
    with running_server(ConstantPolicy()) as first, running_server(ConstantPolicy()) as second:
        assert shard(first.port, out, 0) == 0 and shard(second.port, out, 1) == 0
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert cli.main(["merge", str(out), "--output", str(out / "merged.json")]) == 0
    warned = unpinned_warnings(caplog)
    assert len(warned) == 1, warned
    assert "results_shard0of2.json" in warned[0] and "results_shard1of2.json" in warned[0]
    assert "another checkpoint" in warned[0] and "upgrade gr00t-server" in warned[0]


def test_a_merge_of_shards_that_hold_a_checkpoint_identity_gives_no_such_warning(tmp_path, caplog):
    out = tmp_path / "shards"
    with running_server(Checkpoint("a")) as first, running_server(Checkpoint("a")) as second:
        assert shard(first.port, out, 0) == 0 and shard(second.port, out, 1) == 0
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert cli.main(["merge", str(out), "--output", str(out / "merged.json")]) == 0
    assert unpinned_warnings(caplog) == []
