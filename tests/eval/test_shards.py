"""Sharding: deterministic slices with fixed seeds; merged shards report exactly what one run reports."""

import dataclasses
import json

import numpy as np
import pytest

from eval.scale_fixtures import policy_server, run_cli
from gr00t_client import PolicyClient
from gr00t_eval.metrics import EpisodeOutcome
from gr00t_eval.rollout.runner import RolloutConfig
from gr00t_eval.shard import MergeError, ShardSpec, merge_results, run_suite, shard_ranges
from gr00t_eval.suites import Task

ENV_SPEC = "walkto/fast,walkto/slow"
TIMING_KEYS = {"eval_s", "eval_ep_s"}
RUN_SPECIFIC_KEYS = {"env_index", "video_path"}  # which worker row ran an episode depends on the layout


def config(**overrides):
    values = dict(env_name=ENV_SPEC, n_episodes=5, n_envs=2, n_action_steps=2, max_episode_steps=6, seed=11, vectorization="sync")
    values.update(overrides)
    return RolloutConfig(**values)


@pytest.fixture(scope="module")
def client():
    with policy_server() as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as connected:
            yield connected


def comparable(results):
    """What must not depend on sharding: episodes (without worker rows) and aggregates (without timings)."""
    def strip(agg):
        return {k: v for k, v in agg.items() if k not in TIMING_KEYS}

    return {
        "per_episode": [{k: v for k, v in e.items() if k not in RUN_SPECIFIC_KEYS} for e in results["per_episode"]],
        "per_task": {k: strip(v) for k, v in results["per_task"].items()},
        "per_group": {k: strip(v) for k, v in results["per_group"].items()},
        "overall": strip(results["overall"]),
        "tasks": results["tasks"],
        "failed_tasks": results["failed_tasks"],
    }


def test_shard_spec_parses_i_of_n_and_rejects_out_of_range():
    assert ShardSpec.parse("1/4") == ShardSpec(1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="i/N"):
            ShardSpec.parse(bad)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 12])
def test_shards_cover_every_task_episode_exactly_once(count):
    tasks = [Task("a/x", "a"), Task("b/y", "b")]
    covered = []
    for index in range(count):
        for env_name, episodes in shard_ranges(tasks, 5, ShardSpec(index, count)).items():
            covered += [(env_name, e) for e in episodes]
    assert sorted(covered) == sorted((t.env_name, e) for t in tasks for e in range(5))


def test_a_shard_is_a_contiguous_slice_of_the_task_episode_list():
    tasks = [Task("a/x", "a"), Task("b/y", "b")]
    assert shard_ranges(tasks, 5, ShardSpec(0, 2)) == {"a/x": range(0, 5)}
    assert shard_ranges(tasks, 5, ShardSpec(1, 3)) == {"a/x": range(3, 5), "b/y": range(0, 1)}


def test_two_merged_shards_equal_one_run_with_the_same_seeds(client):
    single = run_suite(client, ENV_SPEC, config())
    shards = [run_suite(client, ENV_SPEC, config(), ShardSpec(i, 2)) for i in range(2)]
    assert [e["seed"] for e in shards[0]["per_episode"]] == [11, 12, 13, 14, 15]
    merged = merge_results(shards)
    assert comparable(merged) == comparable(single)
    assert merged["overall"]["eval_s"] == pytest.approx(sum(s["overall"]["eval_s"] for s in shards))
    assert merged["missing_episodes"] == [] and merged["plan"]["shard"] is None


def test_merge_order_of_the_files_does_not_matter(client):
    shards = [run_suite(client, ENV_SPEC, config(), ShardSpec(i, 3)) for i in range(3)]
    assert comparable(merge_results(shards[::-1])) == comparable(merge_results(shards))


def test_merge_refuses_overlapping_missing_or_foreign_shards(client):
    shard0 = run_suite(client, ENV_SPEC, config(), ShardSpec(0, 2))
    with pytest.raises(MergeError, match="is in both results #0 and results #1"):
        merge_results([shard0, shard0])
    with pytest.raises(MergeError, match="5 episodes are in no results file: walkto/slow#0"):
        merge_results([shard0])
    assert merge_results([shard0], allow_missing=True)["overall"]["n_episodes"] == 5
    for other in (config(seed=12), config(max_episode_steps=5)):
        with pytest.raises(MergeError, match="different plan"):
            merge_results([shard0, run_suite(client, ENV_SPEC, other, ShardSpec(1, 2))])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_merge_refuses_client_chunking_shards_run_with_different_n_envs(client, mode):
    # Under sync or async chunking a row's chunk is re-planned when any row starts an episode: n_envs changes outcomes.
    shard0 = run_suite(client, ENV_SPEC, config(client_chunking=mode, n_envs=2), ShardSpec(0, 2))
    shard1 = run_suite(client, ENV_SPEC, config(client_chunking=mode, n_envs=1), ShardSpec(1, 2))
    with pytest.raises(MergeError, match=f"setting n_envs 1 \\(2 in the first; with client_chunking '{mode}' the "
                                         "number of envs changes what an episode does\\)"):
        merge_results([shard0, shard1])
    same = run_suite(client, ENV_SPEC, config(client_chunking=mode, n_envs=2), ShardSpec(1, 2))
    assert merge_results([shard0, same])["missing_episodes"] == []


def test_a_python_shard_with_auto_n_envs_records_the_number_of_envs_this_machine_ran_it_with(client, monkeypatch):
    monkeypatch.setattr("gr00t_eval.suites.usable_cpu_count", lambda: 4)  # floor(4 * 0.7) = 2 envs, below the 5 per task
    results = run_suite(client, ENV_SPEC, config(client_chunking="sync", n_envs=0), ShardSpec(0, 2))
    assert results["plan"]["settings"]["n_envs"] == 2 and results["config"]["n_envs"] == 2


def test_merge_pools_shards_run_with_different_n_envs_without_client_chunking(client):
    shards = [run_suite(client, ENV_SPEC, config(n_envs=n_envs), ShardSpec(i, 2)) for i, n_envs in enumerate((2, 1))]
    assert comparable(merge_results(shards)) == comparable(run_suite(client, ENV_SPEC, config()))


def test_sharding_needs_a_seed(client):
    with pytest.raises(ValueError, match="--shard needs --seed"):
        run_suite(client, ENV_SPEC, config(seed=None), ShardSpec(0, 2))


def test_cli_shards_then_merge_equals_cli_single_run(tmp_path, capsys):
    with policy_server() as server:
        common = ["rollout", "--env-name", ENV_SPEC, "--n-episodes", "4", "--n-envs", "2", "--n-action-steps", "2",
                  "--max-episode-steps", "6", "--seed", "5", "--policy-client-port", str(server.port), "--no-video",
                  "--vectorization", "sync"]
        assert run_cli(common + ["--output-dir", str(tmp_path / "single")]) == 0
        for index in range(2):
            assert run_cli(common + ["--shard", f"{index}/2", "--output-dir", str(tmp_path / "shards")]) == 0
    assert sorted(p.name for p in (tmp_path / "shards").glob("results*.json")) == ["results_shard0of2.json", "results_shard1of2.json"]
    assert run_cli(["merge", str(tmp_path / "shards"), "--output", str(tmp_path / "merged.json")]) == 0
    merged = json.loads((tmp_path / "merged.json").read_text())
    single = json.loads((tmp_path / "single" / "results.json").read_text())
    assert comparable(merged) == comparable(single)
    assert "Merged 2 files" in capsys.readouterr().out


def test_python_shards_record_their_policy_so_merge_refuses_shards_of_two_checkpoints():
    from eval.scale_fixtures import Checkpoint
    from gr00t_eval.policy_identity import policy_record

    shards = []
    for index, checkpoint in enumerate(("a", "b")):
        with policy_server(Checkpoint(checkpoint)) as server:
            with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as connected:
                shards.append(run_suite(connected, ENV_SPEC, config(), ShardSpec(index, 2)))
                assert shards[-1]["policy"] == policy_record(connected)
    assert shards[0]["policy"]["identity"] == {"kind": "test", "checkpoint": "a"}
    with pytest.raises(MergeError, match="results #1 was run against another policy than results #0"):
        merge_results(shards)


def test_merge_refuses_names_that_do_not_label_every_results(client):
    shard0 = run_suite(client, ENV_SPEC, config(), ShardSpec(0, 2))
    with pytest.raises(MergeError, match="^names has 1 entries for 2 results"):
        merge_results([shard0, shard0], names=["a.json"])


@pytest.mark.parametrize("index, count, shown", [(True, 2, "shard index must be a whole number, got bool True"),
                                                 (0.5, 2, "shard index must be a whole number, got float 0.5"),
                                                 (1, 2.5, "shard count must be a whole number, got float 2.5"),
                                                 (0, "2", "shard count must be a whole number, got str '2'")])
def test_shard_spec_refuses_an_index_or_count_that_is_no_whole_number_naming_it(index, count, shown):
    """ShardSpec(True, 2) ran as shard 1/2 and recorded [True, 2], which merge then refused; 0.5 failed in run_suite."""
    with pytest.raises(ValueError, match=f"^{shown}$"):
        ShardSpec(index, count)


def test_shard_spec_takes_numpy_ints_as_plain_ints():
    spec = ShardSpec(np.int64(1), np.int32(2))
    assert spec == ShardSpec(1, 2) and (type(spec.index), type(spec.count)) == (int, int)


def test_merge_refuses_shard_file_paths_naming_shards_and_load_results(client, tmp_path):
    """A list of paths (what `gr00t-eval merge` takes) failed with "'PosixPath' object has no attribute 'get'"."""
    from gr00t_eval import write_results

    write_results(tmp_path / "a.json", run_suite(client, ENV_SPEC, config(), ShardSpec(0, 2)))
    with pytest.raises(TypeError, match=r"^shards\[0\] must be a results dict \(as load_results returns\), got "
                                        r"PosixPath '.*a\.json' - read it with load_results$"):
        merge_results([tmp_path / "a.json"])


def test_merge_refuses_one_results_dict_naming_shards(client):
    """One dict failed with KeyError: 0."""
    shard0 = run_suite(client, ENV_SPEC, config(), ShardSpec(0, 2))
    with pytest.raises(TypeError, match=r"^shards must be a list of results dicts \(as load_results returns\), got one "
                                        r"results dict; pass \[results\]$"):
        merge_results(shard0)


def test_merge_reads_shards_given_as_a_generator_once(client):
    """A generator failed with "object of type 'generator' has no len()"."""
    shards = [run_suite(client, ENV_SPEC, config(), ShardSpec(i, 2)) for i in range(2)]
    assert comparable(merge_results(shard for shard in shards)) == comparable(merge_results(shards))


@pytest.mark.parametrize("allow_missing", ["no", 0, None])
def test_merge_refuses_an_allow_missing_that_is_no_bool(client, allow_missing):
    """"no" is true to Python: an incomplete merge was returned instead of MergeError."""
    shard0 = run_suite(client, ENV_SPEC, config(), ShardSpec(0, 2))
    with pytest.raises(TypeError, match=f"^allow_missing must be a bool \\(True or False\\), got "
                                        f"{type(allow_missing).__name__} {allow_missing!r}$"):
        merge_results([shard0], allow_missing=allow_missing)


def outcomes_of(results):
    return [EpisodeOutcome.from_json_dict(entry) for entry in results["per_episode"]]


def test_run_suite_refuses_an_episode_given_twice_in_done(client):
    """Kept twice: a 10-episode plan reported 11 episodes, one counted twice in the metrics."""
    done = outcomes_of(run_suite(client, ENV_SPEC, config()))[:1] * 2
    with pytest.raises(ValueError, match="^done has episode 0 of walkto/fast twice; give each episode's outcome once"):
        run_suite(client, ENV_SPEC, config(), done=done)


def test_run_suite_refuses_done_outcomes_of_another_seed(client):
    """A seed-100 run kept seed-11 outcomes and reported episodes 0 and 1 with seeds 11 and 12."""
    done = outcomes_of(run_suite(client, ENV_SPEC, config()))[:2]
    with pytest.raises(ValueError, match=r"^done has episode 0 of walkto/fast with seed 11, but this run gives it seed "
                                         r"100 \(config.seed 100 \+ episode index\)"):
        run_suite(client, ENV_SPEC, config(seed=100), done=done)
    with pytest.raises(ValueError, match="^done needs config.seed"):
        run_suite(client, ENV_SPEC, config(seed=None), done=done)


def test_run_suite_refuses_done_outcomes_longer_than_max_episode_steps(client):
    done = outcomes_of(run_suite(client, ENV_SPEC, config()))[:2]
    longest = max(outcome.length for outcome in done)
    assert longest > 2
    with pytest.raises(ValueError, match="^done has episode [01] of walkto/fast of length [3-6], more than this run's "
                                         "max_episode_steps 2: it ran under other settings"):
        run_suite(client, ENV_SPEC, config(max_episode_steps=2), done=done)


def test_run_suite_keeps_done_outcomes_of_the_same_plan_and_runs_the_rest(client):
    single = run_suite(client, ENV_SPEC, config())
    resumed = run_suite(client, ENV_SPEC, config(), done=iter(outcomes_of(single)[:3]))
    assert comparable(resumed)["per_episode"] == comparable(single)["per_episode"]


def test_run_suite_keeps_done_outcomes_of_recorded_seeds_from_a_policy_of_unknown_identity(client):
    """A policy in this process has no get_server_info: it may be a replay (Gr00tSimPolicyWrapper(ReplayPolicy)),
    whose episodes carry their recorded seeds, not base seed + index. Its resume was refused as another run's."""
    from eval.scale_fixtures import ConstantPolicy

    done = [dataclasses.replace(outcome, seed=outcome.seed + 1000)
            for outcome in outcomes_of(run_suite(client, ENV_SPEC, config()))[:2]]
    resumed = run_suite(ConstantPolicy(), ENV_SPEC, config(), done=done)
    assert {outcome.seed for outcome in done} <= {entry["seed"] for entry in resumed["per_episode"]}
    assert resumed["overall"]["n_episodes"] == 10


def test_numpy_bools_are_taken_as_bools(client):
    """np.False_ was refused as "must be a bool ..., got bool np.False_" while numpy ints are taken for counts; taken,
    it was kept as numpy's bool and merge_results failed ("Object of type bool is not JSON serializable")."""
    shards = [run_suite(client, ENV_SPEC, config(terminate_on_success=np.False_), ShardSpec(i, 2)) for i in range(2)]
    assert shards[0]["config"]["terminate_on_success"] is False
    assert merge_results(shards)["status"] == "complete"
    assert merge_results(shards[:1], allow_missing=np.True_)["status"] == "incomplete"


def test_seeds_are_checked_for_every_policy_but_a_replay_and_one_in_this_process_without_a_record(client):
    """A served policy whose server cannot say what it serves (a reference-style server: no record) had its resume's
    seeds left unchecked, and so had run_with_ray without a policy record: another seed's outcomes were kept."""
    from eval.scale_fixtures import ConstantPolicy
    from gr00t_eval.shard import seeds_known

    assert seeds_known(None, client) and seeds_known(None)  # a served policy; Ray's shards always talk to servers
    assert seeds_known({"identity": None}, ConstantPolicy())
    assert not seeds_known(None, ConstantPolicy())  # in this process: it may replay recorded seeds
    assert not seeds_known({"identity": {"kind": "replay"}}, client)


def test_a_checkpoints_own_tag_spelt_like_a_member_name_is_not_that_member(caplog):
    """An N1.6-era checkpoint's 'libero_panda' (served as given) was read as libero_sim by the env check: libero_sim
    envs passed without the warning for a tag no prefix maps to, and a new_embodiment env was refused with advice
    naming libero_sim, a tag the server does not serve."""
    import logging

    from gr00t_eval.policy_identity import check_serves_env_embodiments

    with caplog.at_level(logging.WARNING):
        check_serves_env_embodiments({"embodiment_tag": "libero_panda", "identity": None}, ["walkto/fast"])
    assert "a tag of its checkpoint that no env prefix can map to" in caplog.text


def test_a_merge_says_the_envs_stepped_where_any_shard_says_so(client):
    """Ray's merged results dropped each shard's envs_stepped: a run whose simulator died after its envs stepped,
    before any episode ended, was still refused as a usage error (exit 2, no results.json, no --resume line)."""
    shards = [run_suite(client, "walkto/fast", config(), shard=ShardSpec(i, 2)) for i in range(2)]
    assert all(shard["envs_stepped"] for shard in shards)
    assert merge_results(shards)["envs_stepped"] is True
    shards[0]["envs_stepped"] = shards[1]["envs_stepped"] = False  # shards of a run whose envs never stepped
    assert merge_results(shards)["envs_stepped"] is False


def test_a_shards_ipv6_server_is_named_bracketed_in_merged_servers():
    """'::1:5555' read back as host '::1:5555' on the default port: the merged record named another address."""
    from gr00t_eval.ray_runner import parse_servers
    from gr00t_eval.shard import _server_of

    named = _server_of({"config": {"policy_client_host": "::1", "policy_client_port": 5555}})
    assert named == "[::1]:5555"
    assert [(s.host.strip("[]"), s.port) for s in parse_servers(named, 6000)] == [("::1", 5555)]
    assert _server_of({"config": {"policy_client_host": "127.0.0.1", "policy_client_port": 5555}}) == "127.0.0.1:5555"
