"""Files an older gr00t-eval wrote, used after an upgrade: a batch job saved before a setting existed, a run or
shard recorded against a server that gave no checkpoint identity or no policy at all, and a run's default video
folder saved as a relative path."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import pytest

from eval.scale_fixtures import ConstantPolicy, policy_server

from gr00t_eval.batch import changed_settings, parse_job, planned_config, prepare_job_dir
from gr00t_eval.cli import main
from gr00t_eval.policy_identity import policy_record, same_policy


def test_a_job_saved_before_a_setting_existed_is_not_rerun_after_an_upgrade(tmp_path, caplog):
    job = parse_job({"name": "j", "env_name": "walkto/fast", "n_episodes": 2, "seed": 0,
                     "policy_server": {"port": 5555}}, 0)
    config = job.rollout_config()
    older = planned_config(config)
    del older["env_timeout_s"]  # not written before --env-timeout existed
    assert changed_settings(job, {"job_config": older}) == ""
    job_dir = tmp_path / "j"
    job_dir.mkdir()
    (job_dir / "run.json").write_text(json.dumps({"job_config": older, "config": {**older, "seed": 0}, "policy": None}))
    (job_dir / "episodes.jsonl").write_text(json.dumps({"task": "walkto/fast", "episode_index": 0, "seed": 0,
                                                        "success": True, "sum_reward": 1.0, "max_reward": 1.0,
                                                        "length": 2, "env_index": 0}) + "\n")
    with caplog.at_level(logging.WARNING):
        _config, done = prepare_job_dir(job_dir, config, None)
    assert [o.episode_index for o in done] == [0]  # kept, not run again
    assert not (job_dir / "episodes.replaced.jsonl").exists() and "changed" not in caplog.text


def test_a_policy_recorded_from_a_server_without_checkpoint_identity_matches_the_same_policy_upgraded(tmp_path):
    with policy_server() as server:
        from gr00t_client import PolicyClient

        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as client:
            current = policy_record(client)
    assert current is not None
    # What an older gr00t-server's record held: no identity, and the fingerprint of everything else.
    older = {k: v for k, v in current.items() if k not in ("fingerprint", "fingerprint_without_identity")}
    older.update(identity=None, fingerprint=current["fingerprint_without_identity"])
    upgraded = {**current, "identity": {"weights_fingerprint": "abc"}, "fingerprint": "f" * 16}
    assert same_policy(older, upgraded) and same_policy(upgraded, older)
    other = {**older, "fingerprint": "0" * 16}  # another policy's configs
    assert not same_policy(other, upgraded)


def test_resuming_a_run_that_recorded_no_policy_says_its_server_cannot_be_checked(tmp_path, caplog, monkeypatch):
    out = tmp_path / "run"
    args = ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir", str(out),
            "--timeout-ms", "5000", "--n-episodes", "3", "--seed", "0", "--n-envs", "1", "--n-action-steps", "2",
            "--max-episode-steps", "6", "--vectorization", "sync"]
    with policy_server() as server:
        assert main([*args, "--policy-client-port", str(server.port)]) == 0
        run = json.loads((out / "run.json").read_text())
        assert run["default_video_dir"] is True
        assert run["config"]["video_dir"] == str(out / "videos") and os.path.isabs(run["config"]["video_dir"])
        # an older gr00t-eval's run file: no policy, no default_video_dir, the default video folder relative
        del run["policy"], run["default_video_dir"]
        run["config"]["video_dir"] = os.path.join("run", "videos")
        (out / "run.json").write_text(json.dumps(run))
        lines = (out / "episodes.jsonl").read_text().splitlines()
        (out / "episodes.jsonl").write_text("\n".join(lines[:2]) + "\n")  # the third episode did not run
        (out / "results.json").unlink()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        with caplog.at_level(logging.WARNING):
            assert main(["rollout", "--resume", str(out), "--policy-client-port", str(server.port), "--env-import",
                         "eval.scale_fixtures"]) == 0  # the run's registrations, which a resume is held to
    assert "recorded no policy for its 2 earlier episodes" in caplog.text
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["video_dir"] == str(out / "videos")  # the resumed run's own, not ./run/videos here
    assert not (elsewhere / "run").exists()
    assert json.loads((out / "run.json").read_text())["policy"]["fingerprint"]  # recorded from now on


def test_an_older_gr00t_eval_s_run_that_logged_an_episode_lately_is_neither_resumed_nor_overwritten(tmp_path, capsys):
    """A run file of a gr00t-eval older than claims names no process to check: a run still running was resumed (its
    episodes ran twice) or overwritten as if it had ended. One whose log changed in the last 120 s is refused."""
    out = tmp_path / "run"
    args = ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir", str(out),
            "--timeout-ms", "5000", "--n-episodes", "3", "--seed", "0", "--n-envs", "1", "--n-action-steps", "2",
            "--max-episode-steps", "6", "--vectorization", "sync", "--no-video"]
    with policy_server() as server:
        assert main([*args, "--policy-client-port", str(server.port)]) == 0
        run = json.loads((out / "run.json").read_text())
        for key in ("claim", "policy", "default_video_dir"):  # what an older gr00t-eval's run file did not hold
            del run[key]
        (out / "run.json").write_text(json.dumps(run))
        lines = (out / "episodes.jsonl").read_text().splitlines()
        (out / "episodes.jsonl").write_text("\n".join(lines[:2]) + "\n")  # its third episode still runs
        (out / "results.json").unlink()
        capsys.readouterr()
        resume = ["rollout", "--resume", str(out), "--policy-client-port", str(server.port), "--env-import",
                  "eval.scale_fixtures"]
        assert main(resume) == 2
        err = capsys.readouterr().err
        assert f"--resume {out} holds the run of an older gr00t-eval (run.json records no claim, so whether that run " \
               "still runs cannot be checked), and its episodes.jsonl changed" in err, err
        assert "Wait for it to end, or stop it first" in err
        assert main([*args, "--policy-client-port", str(server.port), "--overwrite"]) == 2
        assert f"--output-dir {out} holds the run of an older gr00t-eval" in capsys.readouterr().err
        assert len((out / "episodes.jsonl").read_text().splitlines()) == 2  # neither ran an episode
        # Stopped by Ctrl-C after its second episode, it wrote its results: it ended, and is resumed at once
        (out / "results.json").write_text(json.dumps({"kind": "rollout", "status": "interrupted"}))
        logged = (out / "episodes.jsonl").stat().st_mtime
        os.utime(out / "results.json", (logged + 1, logged + 1))
        assert main(resume) == 0
    assert json.loads((out / "results.json").read_text())["status"] == "complete"


def test_two_checkpoints_are_still_told_apart_when_a_record_without_identity_matches_both(tmp_path):
    from gr00t_eval.shard import MergeError, merge_results

    base = {"policy_class": "Gr00tPolicy", "embodiment_tag": "new_embodiment", "fingerprint_without_identity": "c" * 16}
    older = {**base, "identity": None, "fingerprint": "c" * 16}  # an older server's record of those configs
    a = {**base, "identity": {"weights_fingerprint": "a"}, "fingerprint": "a" * 16}
    b = {**base, "identity": {"weights_fingerprint": "b"}, "fingerprint": "b" * 16}
    assert same_policy(older, a) and same_policy(older, b) and not same_policy(a, b)
    out = tmp_path / "run"
    args = ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--timeout-ms", "5000",
            "--n-episodes", "2", "--seed", "0", "--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6",
            "--no-video", "--vectorization", "sync"]
    shards = []
    with policy_server() as server:
        for index in range(3):
            assert main([*args, "--output-dir", str(out), "--shard", f"{index}/3", "--policy-client-port", str(server.port)]) == 0
            shards.append(json.loads((out / f"results_shard{index}of3.json").read_text()))
    for results, policy in zip(shards, (older, a, b)):
        results["policy"] = policy
    try:
        merge_results(shards, names=["s0", "s1", "s2"])
        raise AssertionError("shards of two checkpoints merged")
    except MergeError as exc:
        assert "s2 was run against another policy than s1" in str(exc)
    merged = merge_results(shards[:2], allow_missing=True, names=["s0", "s1"])
    assert merged["policy"]["fingerprint"] == "a" * 16  # the record that names the checkpoint


def test_a_resume_upgrades_a_record_without_identity_so_a_later_resume_is_held_to_the_checkpoint(tmp_path):
    from gr00t_eval import scale_cli

    older = {"policy_class": "Gr00tPolicy", "identity": None, "fingerprint": "c" * 16}
    a = {"policy_class": "Gr00tPolicy", "identity": {"weights_fingerprint": "a"}, "fingerprint": "a" * 16,
         "fingerprint_without_identity": "c" * 16}
    b = {**a, "identity": {"weights_fingerprint": "b"}, "fingerprint": "b" * 16}
    (tmp_path / "run.json").write_text(json.dumps({"env_name": "walkto/slow", "config": {}, "policy": older}))
    scale_cli._adopt_run_policy(tmp_path, None, older, a, "the server serves", 2)
    recorded = json.loads((tmp_path / "run.json").read_text())["policy"]
    assert recorded["fingerprint"] == "a" * 16
    try:
        scale_cli._adopt_run_policy(tmp_path, None, recorded, b, "the server serves", 3)
        raise AssertionError("a resume against another checkpoint was accepted")
    except Exception as exc:  # UsageError
        assert "serve the same checkpoint" in str(exc)


def test_a_run_recorded_before_processor_files_were_hashed_resumes_against_the_same_checkpoint():
    from gr00t_eval.policy_identity import record_from_info

    info = {"policy_class": "Gr00tPolicy", "embodiment_tag": "libero_sim", "modality_configs": {"action": [0, 1]},
            "policy_identity": {"kind": "gr00t", "config_sha256": "c", "weights_fingerprint": "w",
                                "processor_sha256": "p"}}
    now = record_from_info(info)
    before = record_from_info({**info, "policy_identity": {"kind": "gr00t", "config_sha256": "c",
                                                            "weights_fingerprint": "w"}})
    assert same_policy(before, now) and same_policy(now, before)
    other_weights = record_from_info({**info, "policy_identity": {"kind": "gr00t", "config_sha256": "c",
                                                                   "weights_fingerprint": "x"}})
    assert not same_policy(other_weights, now)
    other_processor = record_from_info({**info, "policy_identity": {**info["policy_identity"], "processor_sha256": "q"}})
    assert not same_policy(other_processor, now)  # both hashed: other statistics are another policy


def test_a_run_recorded_before_preprocessor_config_was_hashed_resumes_against_the_same_checkpoint():
    from gr00t_eval.policy_identity import record_from_info

    hashed = {"kind": "gr00t", "config_sha256": "c", "weights_fingerprint": "w", "processor_sha256": "p"}
    info = {"policy_class": "Gr00tPolicy", "embodiment_tag": "libero_sim", "modality_configs": {"action": [0, 1]},
            "policy_identity": {**hashed, "preprocessor_sha256": "i"}}
    now = record_from_info(info)
    before = record_from_info({**info, "policy_identity": hashed})
    assert same_policy(before, now) and same_policy(now, before)
    before_processor_files = record_from_info({**info, "policy_identity": {"kind": "gr00t", "config_sha256": "c",
                                                                            "weights_fingerprint": "w"}})
    assert same_policy(before_processor_files, now)
    other_statistics = record_from_info({**info, "policy_identity": {**hashed, "processor_sha256": "q"}})
    assert not same_policy(other_statistics, now)
    other_image_settings = record_from_info({**info, "policy_identity": {**hashed, "preprocessor_sha256": "j"}})
    assert not same_policy(other_image_settings, now)  # both hashed: another pixel budget is another policy


REPLAY_META_ONLY = {"kind": "replay", "dataset_meta_sha256": "m", "episodes": 4, "execution_horizon": 2}
REPLAY_INFO = {"policy_class": "ReplayPolicy", "embodiment_tag": "new_embodiment", "modality_configs": {"action": [0, 1]},
               "policy_identity": {**REPLAY_META_ONLY, "dataset_data_sha256": "d"}}


def test_a_replay_run_recorded_before_data_files_were_hashed_resumes_on_the_same_meta_saying_actions_went_unchecked(
        caplog):
    from gr00t_eval.policy_identity import record_from_info

    now = record_from_info(REPLAY_INFO)
    before = record_from_info({**REPLAY_INFO, "policy_identity": {**REPLAY_META_ONLY, "episodes": 3}})
    assert not same_policy(before, now)  # another episode list is another dataset, recorded before or not
    before = record_from_info({**REPLAY_INFO, "policy_identity": REPLAY_META_ONLY})
    with caplog.at_level(logging.WARNING, logger="gr00t_eval.policy_identity"):
        assert same_policy(before, now) and same_policy(now, before)
    assert f"fingerprint {before['fingerprint']}) was recorded before replays hashed their data files" in caplog.text
    assert "its recorded actions are not compared" in caplog.text
    other_actions = record_from_info({**REPLAY_INFO, "policy_identity": {**REPLAY_META_ONLY, "dataset_data_sha256": "e"}})
    assert not same_policy(other_actions, now)  # both hashed: other recorded actions are another policy


def test_a_resume_upgrades_a_replay_record_without_data_hash_so_a_later_resume_is_held_to_the_actions(tmp_path):
    from gr00t_eval import scale_cli
    from gr00t_eval.cli_errors import UsageError
    from gr00t_eval.policy_identity import record_from_info

    older = record_from_info({**REPLAY_INFO, "policy_identity": REPLAY_META_ONLY})
    now = record_from_info(REPLAY_INFO)
    other_actions = record_from_info({**REPLAY_INFO, "policy_identity": {**REPLAY_META_ONLY, "dataset_data_sha256": "e"}})
    (tmp_path / "run.json").write_text(json.dumps({"env_name": "walkto/slow", "config": {}, "policy": older}))
    scale_cli._adopt_run_policy(tmp_path, None, older, now, "the server at 127.0.0.1:5555", 2)
    recorded = json.loads((tmp_path / "run.json").read_text())["policy"]
    assert recorded["fingerprint"] == now["fingerprint"]
    try:
        scale_cli._adopt_run_policy(tmp_path, None, recorded, other_actions, "the server at 127.0.0.1:5555", 3)
        raise AssertionError("a resume against a replay of other recorded actions was accepted")
    except UsageError as exc:
        assert "serve the same checkpoint (or dataset)" in str(exc)


def test_a_run_recorded_before_the_tokenizer_was_hashed_resumes_against_the_same_checkpoint():
    from gr00t_eval.policy_identity import record_from_info

    hashed = {"kind": "gr00t", "config_sha256": "c", "weights_fingerprint": "w", "processor_sha256": "p",
              "preprocessor_sha256": "i"}
    info = {"policy_class": "Gr00tPolicy", "embodiment_tag": "libero_sim", "modality_configs": {"action": [0, 1]},
            "policy_identity": {**hashed, "tokenizer_sha256": "t"}}
    now = record_from_info(info)
    before = record_from_info({**info, "policy_identity": hashed})
    assert same_policy(before, now) and same_policy(now, before)
    before_image_settings = record_from_info(
        {**info, "policy_identity": {k: v for k, v in hashed.items() if k != "preprocessor_sha256"}})
    assert same_policy(before_image_settings, now)
    other_tokenizer = record_from_info({**info, "policy_identity": {**hashed, "tokenizer_sha256": "u"}})
    assert not same_policy(other_tokenizer, now)  # both hashed: another chat template is another policy


def _job_with_one_episode_logged(folder, run_file_extra):
    """A batch job's folder holding one logged episode and a run file (job_config, config and `run_file_extra`), its
    config, and the policy record a current server gives."""
    from gr00t_client import PolicyClient

    job = parse_job({"name": "j", "env_name": "walkto/fast", "n_episodes": 2, "seed": 0,
                     "policy_server": {"port": 5555}}, 0)
    config = job.rollout_config()
    job_dir = folder / "j"
    job_dir.mkdir()
    (job_dir / "run.json").write_text(json.dumps({"job_config": planned_config(config),
                                                  "config": dataclasses.asdict(config), **run_file_extra}))
    (job_dir / "episodes.jsonl").write_text(json.dumps({"task": "walkto/fast", "episode_index": 0, "seed": 0,
                                                        "success": True, "sum_reward": 1.0, "max_reward": 1.0,
                                                        "length": 2, "env_index": 0}) + "\n")
    with policy_server() as server, PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as client:
        return job_dir, config, policy_record(client)


def test_a_job_resumed_after_an_attempt_that_recorded_no_policy_says_nothing_checks_its_episodes(tmp_path, caplog):
    """Its first attempt's server gave no policy (a reference server): a resume against a gr00t-server kept those
    episodes under the new policy without a word, where a rollout's resume warns."""
    job_dir, config, current = _job_with_one_episode_logged(tmp_path, {"policy": None})
    with caplog.at_level(logging.WARNING):
        _config, done = prepare_job_dir(job_dir, config, current)
    assert [o.episode_index for o in done] == [0]  # kept, as after an upgrade
    assert "its earlier attempt recorded no policy" in caplog.text and "will pool both" in caplog.text
    assert json.loads((job_dir / "run.json").read_text())["policy"]["fingerprint"] == current["fingerprint"]


def test_a_job_an_older_gr00t_eval_wrote_without_a_policy_is_resumed_naming_it_not_blaming_the_server(tmp_path,
                                                                                                     caplog):
    """An older gr00t-eval's job run file has no policy key, whatever its server said: the resume's warning said "its
    server did not say which it served", where a rollout's resume says an older gr00t-eval may be why."""
    job_dir, config, current = _job_with_one_episode_logged(tmp_path, {})
    with caplog.at_level(logging.WARNING):
        _config, done = prepare_job_dir(job_dir, config, current)
    assert [o.episode_index for o in done] == [0]
    assert "recorded no policy (an older gr00t-eval, or a server that did not say)" in caplog.text, caplog.text
    assert "its server did not say which it served" not in caplog.text


def test_a_resume_upgrades_a_checkpoint_record_without_tokenizer_hash_so_a_later_resume_is_held_to_it(tmp_path):
    from gr00t_eval import scale_cli
    from gr00t_eval.cli_errors import UsageError
    from gr00t_eval.policy_identity import record_from_info

    hashed = {"kind": "gr00t", "config_sha256": "c", "weights_fingerprint": "w", "processor_sha256": "p"}
    info = {"policy_class": "Gr00tPolicy", "embodiment_tag": "libero_sim", "modality_configs": {"action": [0, 1]},
            "policy_identity": {**hashed, "tokenizer_sha256": "t"}}
    older, now = record_from_info({**info, "policy_identity": hashed}), record_from_info(info)
    other_template = record_from_info({**info, "policy_identity": {**hashed, "tokenizer_sha256": "u"}})
    assert same_policy(older, other_template)  # the older record alone cannot tell them apart
    (tmp_path / "run.json").write_text(json.dumps({"env_name": "walkto/slow", "config": {}, "policy": older}))
    scale_cli._adopt_run_policy(tmp_path, None, older, now, "the server at 127.0.0.1:5555", 2)
    recorded = json.loads((tmp_path / "run.json").read_text())["policy"]
    assert recorded["fingerprint"] == now["fingerprint"]
    with pytest.raises(UsageError, match=r"serve the same checkpoint \(or dataset\)"):
        scale_cli._adopt_run_policy(tmp_path, None, recorded, other_template, "the server at 127.0.0.1:5555", 3)


class TaggedCheckpoint(ConstantPolicy):
    """The walkto policy naming its own embodiment, as Gr00tPolicy does."""

    embodiment_tag_value = "new_embodiment"

    def identity(self):
        return {"kind": "test", "checkpoint": "ckpt-A"}


@pytest.mark.parametrize("older_tag", [None, "NEW_EMBODIMENT"])
def test_a_run_recorded_before_the_server_reported_its_policy_s_own_tag_resumes_and_adopts_it(tmp_path, older_tag):
    from gr00t_client import PolicyClient

    from gr00t_eval.policy_identity import record_from_info

    out = tmp_path / "run"
    args = ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir", str(out),
            "--timeout-ms", "5000", "--n-episodes", "3", "--seed", "0", "--n-envs", "1", "--n-action-steps", "2",
            "--max-episode-steps", "6", "--no-video", "--vectorization", "sync"]
    with policy_server(TaggedCheckpoint()) as server:
        assert main([*args, "--policy-client-port", str(server.port)]) == 0
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as client:
            info = client.get_server_info()
        # What PolicyServer(policy) recorded before it reported the policy's tag: none, or the one it was given as typed
        run = json.loads((out / "run.json").read_text())
        run["policy"] = record_from_info({**info, "embodiment_tag": older_tag})
        (out / "run.json").write_text(json.dumps(run))
        lines = (out / "episodes.jsonl").read_text().splitlines()
        (out / "episodes.jsonl").write_text("\n".join(lines[:2]) + "\n")
        (out / "results.json").unlink()
        assert main(["rollout", "--resume", str(out), "--policy-client-port", str(server.port), "--env-import",
                     "eval.scale_fixtures"]) == 0  # the run's registrations, which a resume is held to
    assert json.loads((out / "run.json").read_text())["policy"]["embodiment_tag"] == "new_embodiment"
    assert len(json.loads((out / "results.json").read_text())["per_episode"]) == 3


def test_a_record_of_another_tag_is_not_matched_by_the_policy_s_own_tag():
    from gr00t_eval.policy_identity import record_from_info

    info = {"policy_class": "Gr00tPolicy", "embodiment_tag": "libero_sim", "modality_configs": {"action": [0, 1]},
            "policy_identity": {"kind": "gr00t", "config_sha256": "c", "weights_fingerprint": "w"}}
    now = record_from_info(info)
    assert same_policy(record_from_info({**info, "embodiment_tag": "LIBERO_PANDA"}), now)
    assert not same_policy(record_from_info({**info, "embodiment_tag": "simpler_env_google"}), now)
    assert not same_policy(record_from_info({**info, "embodiment_tag": None, "modality_configs": {}}), now)


def test_a_batch_job_recorded_without_runtime_gains_it_on_resume_so_a_resume_in_another_dtype_starts_over(tmp_path):
    """A batch job resumes as a rollout's --resume does: its older record (checkpoint identity, no runtime) takes the
    server's runtime, so a later resume against the same checkpoint computed in another dtype is not pooled with it."""
    from gr00t_eval.policy_identity import record_from_info

    info = {"policy_class": "Gr00tPolicy", "embodiment_tag": "libero_sim", "modality_configs": {"action": [0, 1]},
            "policy_identity": {"kind": "gr00t", "config_sha256": "c", "weights_fingerprint": "w",
                                "processor_sha256": "p"}}
    older = record_from_info(info)  # what a run.json written before servers reported their runtime holds
    fp32, bf16 = (record_from_info({**info, "runtime": {"dtype": dtype, "device": "cpu", "inference_mode": "pytorch"}})
                  for dtype in ("float32", "bfloat16"))
    job_dir, config, _current = _job_with_one_episode_logged(tmp_path, {"policy": older})
    _config, done = prepare_job_dir(job_dir, config, fp32)
    assert [o.episode_index for o in done] == [0]  # the same checkpoint: kept
    assert json.loads((job_dir / "run.json").read_text())["policy"]["runtime"]["dtype"] == "float32"
    _config, done = prepare_job_dir(job_dir, config, bf16)
    assert done == []  # the float32 episode is not pooled with bfloat16 ones
    assert (job_dir / "episodes.replaced.jsonl").is_file()
