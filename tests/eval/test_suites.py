"""Suites and task lists: name resolution, auto n_envs, per-task / per-group / overall aggregates, workers per task."""

import json
import os
import re

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

import numpy as np
import pytest

from eval import scale_fixtures
from eval.scale_fixtures import expected_success, policy_server, run_cli
from gr00t_client import PolicyClient
from gr00t_eval.rollout.runner import RolloutConfig
from gr00t_eval.shard import run_suite
from gr00t_eval.suites import METAWORLD_DIFFICULTY, Task, auto_n_envs, get_suite, register_suite, resolve_tasks, suite_names

TASKS = ("walkto/fast", "walkto/slow")
N_EPISODES = 7
SEED = 3

register_suite("walkto-2", [("walkto/fast", "easy"), ("walkto/slow", "hard")], "two walking speeds", replace=True)


def config(**overrides):
    values = dict(env_name="unused", n_episodes=N_EPISODES, n_envs=2, n_action_steps=2, max_episode_steps=6, seed=SEED,
                  vectorization="sync")
    values.update(overrides)
    return RolloutConfig(**values)


@pytest.fixture(scope="module")
def server():
    with policy_server() as running:
        yield running


@pytest.fixture
def client(server):
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as connected:
        yield connected


def test_a_suite_name_expands_to_its_tasks_and_groups():
    tasks, suite = resolve_tasks("walkto-2")
    assert suite == "walkto-2"
    assert tasks == [Task("walkto/fast", "easy"), Task("walkto/slow", "hard")]


def test_a_comma_list_mixes_env_names_and_suites_without_duplicates():
    tasks, suite = resolve_tasks("walkto/slow, walkto-2 ,metaworld/reach-v3")
    assert suite is None
    assert [t.env_name for t in tasks] == ["walkto/slow", "walkto/fast", "metaworld/reach-v3"]
    assert tasks[0].group == "walkto"  # a plain env name is grouped by its prefix
    assert tasks[2] == Task("metaworld/reach-v3", "metaworld")


def test_metaworld_suites_cover_the_50_v3_tasks_once_by_difficulty():
    all_tasks = get_suite("metaworld-mt50").tasks
    assert len(all_tasks) == 50 and len({t.env_name for t in all_tasks}) == 50
    assert {level: len(names) for level, names in METAWORLD_DIFFICULTY.items()} == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    assert [t.env_name for t in get_suite("metaworld-mt3").tasks] == ["metaworld/reach-v3", "metaworld/push-v3", "metaworld/pick-place-v3"]
    assert {t.group for t in get_suite("metaworld/hard").tasks} == {"hard"}
    assert {"metaworld/easy", "metaworld/medium", "metaworld/hard", "metaworld/very_hard", "metaworld-mt10"} <= set(suite_names())


def test_metaworld_suite_tasks_exist_in_metaworld():
    envs = pytest.importorskip("metaworld.env_dict").ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
    missing = [t.env_name for t in get_suite("metaworld-mt50").tasks if f"{t.env_name.split('/')[1]}-goal-observable" not in envs]
    assert missing == []


def test_auto_n_envs_is_70_percent_of_cores_capped_by_episodes_left_and_64():
    assert auto_n_envs(100, cores=16) == 11
    assert auto_n_envs(5, cores=16) == 5
    assert auto_n_envs(1000, cores=128) == 64
    assert auto_n_envs(10, cores=1) == 1


def test_two_task_run_reports_per_task_per_group_and_overall_aggregates(client):
    results = run_suite(client, "walkto-2", config())
    seeds = list(range(SEED, SEED + N_EPISODES))
    expected = {task: [expected_success(task, s) for s in seeds] for task in TASKS}
    assert expected["walkto/slow"].count(False) > 0  # the test needs a task that is not solved every time

    for task in TASKS:
        episodes = [e for e in results["per_episode"] if e["task"] == task]
        assert [e["seed"] for e in episodes] == seeds
        assert [e["success"] for e in episodes] == expected[task]
        agg = results["per_task"][task]
        assert agg["n_episodes"] == N_EPISODES
        assert agg["pc_success"] == pytest.approx(100 * np.mean(expected[task]))
        assert agg["avg_sum_reward"] == pytest.approx(np.mean([e["sum_reward"] for e in episodes]))
        assert agg["avg_max_reward"] == pytest.approx(np.mean([e["max_reward"] for e in episodes]))

    assert results["per_group"]["easy"]["pc_success"] == results["per_task"]["walkto/fast"]["pc_success"]
    assert results["per_group"]["hard"]["pc_success"] == results["per_task"]["walkto/slow"]["pc_success"]
    overall = results["overall"]
    all_successes = expected["walkto/fast"] + expected["walkto/slow"]
    assert overall["n_episodes"] == 2 * N_EPISODES and overall["n_tasks"] == 2
    assert overall["pc_success"] == pytest.approx(100 * np.mean(all_successes))
    assert overall["avg_sum_reward"] == pytest.approx(np.mean([e["sum_reward"] for e in results["per_episode"]]))
    assert overall["eval_s"] == pytest.approx(sum(t["eval_s"] for t in results["per_task"].values()))
    assert results["aggregated"] == overall


def test_run_suite_refuses_a_first_episode_it_would_not_honour_before_running_anything(client):
    scale_fixtures.ENV_EVENTS.clear()
    with pytest.raises(ValueError, match=r"RolloutConfig.first_episode must be 0, got 3"):
        run_suite(client, "walkto-2", config(first_episode=3, n_episodes=2))
    assert scale_fixtures.ENV_EVENTS == []  # no episode 0 or 1 ran under a config that says 3


def test_each_tasks_workers_are_created_when_it_starts_and_closed_when_it_ends(client):
    scale_fixtures.ENV_EVENTS.clear()
    run_suite(client, "walkto/fast,walkto/slow", config(n_envs=3))
    fast, slow = 2.0, 1.0
    assert scale_fixtures.ENV_EVENTS == [("make", fast)] * 3 + [("close", fast)] * 3 + [("make", slow)] * 3 + [("close", slow)] * 3


def test_n_envs_zero_sizes_the_workers_per_task_by_episodes_left(client, monkeypatch):
    monkeypatch.setattr("gr00t_eval.suites.usable_cpu_count", lambda: 100)
    scale_fixtures.ENV_EVENTS.clear()
    results = run_suite(client, "walkto/fast", config(n_envs=0, n_episodes=4))
    assert scale_fixtures.ENV_EVENTS.count(("make", 2.0)) == 4  # min(floor(100 * 0.7), 4 episodes, 64)
    assert results["overall"]["n_episodes"] == 4


def test_a_task_that_cannot_start_is_recorded_and_the_others_still_run(client):
    results = run_suite(client, "walkto/fast,walkto/unknown,nosuchprefix/task", config(n_episodes=2))
    assert results["per_task"]["walkto/fast"]["n_episodes"] == 2
    assert set(results["failed_tasks"]) == {"walkto/unknown", "nosuchprefix/task"}
    assert "unknown walkto task" in results["failed_tasks"]["walkto/unknown"]
    assert "unknown prefix 'nosuchprefix'" in results["failed_tasks"]["nosuchprefix/task"]
    assert results["overall"]["n_failed_tasks"] == 2 and results["overall"]["n_episodes"] == 2


SIMULATOR_DUMP = "\x1b[31mXML error\x1b[0m\n" + "\n".join(f"line {i}: <geom name='g{i}'/>" + "x" * 80 for i in range(1000))


def make_dumping_env(task, **kwargs):
    raise RuntimeError(SIMULATOR_DUMP)  # a simulator that prints its whole model file when it cannot start


def test_a_task_start_failure_is_recorded_and_printed_on_one_bounded_escaped_line(client, caplog):
    caplog.set_level("DEBUG", logger="gr00t_eval")
    from gr00t_client import EmbodimentTag
    from gr00t_eval.metrics import ERROR_REASON_CHARS
    from gr00t_eval.rollout.envs import register_env_prefix

    register_env_prefix("xmldump", EmbodimentTag.NEW_EMBODIMENT, make_dumping_env)
    reason = run_suite(client, "walkto/fast,xmldump/task", config(n_episodes=1))["failed_tasks"]["xmldump/task"]
    assert len(reason) <= ERROR_REASON_CHARS and "\n" not in reason and "\x1b" not in reason
    assert "XML error" in reason and "more characters)" in reason
    # the whole traceback stays there for --log-level DEBUG
    assert [r for r in caplog.records if r.levelname == "DEBUG" and r.exc_info and "xmldump/task" in r.getMessage()]


def test_the_summary_escapes_and_cuts_a_task_failure_an_older_results_file_holds_raw():
    from gr00t_eval.metrics import ERROR_REASON_CHARS
    from gr00t_eval.run_summary import format_summary

    overall = {"n_episodes": 0, "n_errors": 0, "pc_success": None, "eval_s": 1.0}
    summary = format_summary({"per_task": {}, "per_group": {}, "overall": overall,
                              "failed_tasks": {"xmldump/task": SIMULATOR_DUMP}})
    failure = summary.splitlines()[-1]
    assert failure.startswith("task xmldump/task failed: ") and "\x1b" not in summary
    assert len(failure) <= len("task xmldump/task failed: ") + ERROR_REASON_CHARS


def test_rollout_cli_with_a_suite_writes_per_task_results(server, tmp_path, capsys):
    code = run_cli(["rollout", "--env-name", "walkto-2", "--n-episodes", "3", "--n-envs", "0", "--n-action-steps", "2",
                    "--max-episode-steps", "6", "--seed", "0", "--policy-client-port", str(server.port), "--no-video",
                    "--vectorization", "sync", "--output-dir", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["suite"] == "walkto-2" and set(results["per_group"]) == {"easy", "hard"}
    assert results["overall"]["n_episodes"] == 6
    out = capsys.readouterr().out
    assert "walkto/slow" in out and "overall" in out and "success rate:" in out


def test_rollout_prints_task_names_holding_a_terminal_escape_or_bidi_override_escaped(server, tmp_path, capsys, caplog):
    """The INFO lines, the summary table and the `task X failed` line printed them raw (while the `results:` line
    escaped them): ESC[2J cleared the terminal and U+202E reversed the rest of the table row."""
    from gr00t_client import EmbodimentTag
    from gr00t_eval.rollout.envs import register_env_prefix

    caplog.set_level("INFO", logger="gr00t_eval")
    register_env_prefix("anyname", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: scale_fixtures.WalkToEnv(2.0))
    register_env_prefix("xmldump", EmbodimentTag.NEW_EMBODIMENT, make_dumping_env)
    code = run_cli(["rollout", "--env-name", "anyname/pick\x1b[2J\u202eevom,xmldump/\x1b[31mred", "--n-episodes",
                    "1", "--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6",
                    "--policy-client-port", str(server.port), "--no-video", "--output-dir", str(tmp_path)])
    assert code == 1  # a task failed
    captured = capsys.readouterr()
    shown = captured.out + captured.err + "\n".join(record.getMessage() for record in caplog.records)
    assert "\x1b" not in shown and "\u202e" not in shown
    assert "Running collecting 1 episodes for anyname/pick\\x1b[2J\\u202eevom with" in shown
    assert "task xmldump/\\x1b[31mred failed: RuntimeError: \\x1b[31mXML error" in shown
    assert re.search(r"^anyname/pick\\x1b\[2J\\u202eevom\s+task\s+1\s", captured.out, re.MULTILINE), captured.out
    assert "\ntask xmldump/\\x1b[31mred failed: RuntimeError: \\x1b[31mXML error" in captured.out


@pytest.mark.parametrize("env_spec, first, second", [("walkto/x/fast,walkto/x__fast", "walkto/x/fast", "walkto/x__fast"),
                                                     ("walkto/Fast,walkto/fast", "walkto/Fast", "walkto/fast")])
def test_rollout_refuses_two_tasks_whose_videos_would_share_a_folder_naming_both(tmp_path, env_spec, first, second):
    from gr00t_eval.cli_errors import UsageError

    with pytest.raises(UsageError, match=f"tasks '{first}' and '{second}' would write their episode videos into one "
                                         "folder"):
        run_cli(["rollout", "--env-name", env_spec, "--n-episodes", "2", "--policy-client-port", "36200",
                 "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("first, second, reason", [
    ("walkto/Fast", "walkto/fast", "their folder names differ only in case, one folder on case-insensitive file systems"),
    ("uni/caf\u00e9", "uni/cafe\u0301", "their folder names differ only in Unicode normalization (a composed or "
                                        "decomposed accent), one folder on macOS's APFS and HFS+"),
    ("uni/CAF\u00c9", "uni/cafe\u0301", "their folder names differ only in case and Unicode normalization"),
    # one character to one by simple case folding, as case-insensitive file systems fold them; lower() alone does not
    ("uni/\u03c3", "uni/\u03c2", "their folder names differ only in case, one folder on case-insensitive file systems"),
    ("uni/\u03bc", "uni/\u00b5", "their folder names differ only in case, one folder on case-insensitive file systems"),
    ("uni/s", "uni/\u017f", "their folder names differ only in case, one folder on case-insensitive file systems"),
    ("uni/\u03b8", "uni/\u03d1", "their folder names differ only in case, one folder on case-insensitive file systems"),
    ("uni/\u03b2", "uni/\u03d0", "their folder names differ only in case, one folder on case-insensitive file systems"),
    ("uni/k", "uni/\u212a", "their folder names differ only in case, one folder on case-insensitive file systems"),
    ("uni/\u03a3\u00c9", "uni/\u03c2e\u0301", "their folder names differ only in case and Unicode normalization"),
], ids=["case", "nfc-nfd", "both", "final-sigma", "micro-sign", "long-s", "theta-symbol", "beta-symbol", "kelvin-sign",
        "final-sigma-and-nfd"])
def test_tasks_whose_folder_names_one_file_system_takes_for_one_are_refused_saying_why(first, second, reason):
    """NFC and NFD spellings of one name ran, and on macOS one task's videos replaced the other's."""
    from gr00t_eval.suites import check_task_video_dirs

    with pytest.raises(ValueError, match=re.escape(f"tasks {first!r} and {second!r} would write their episode videos "
                                                   "into one folder") + ".*" + re.escape(reason)):
        check_task_video_dirs([Task(first, "g"), Task(second, "g")])


@pytest.mark.parametrize("first, second", [("uni/stra\u00dfe", "uni/strasse"), ("uni/\ufb01le", "uni/file"),
                                           ("uni/STRA\u1e9eE", "uni/strasse")],
                         ids=["sharp-s", "ligature", "capital-sharp-s"])
def test_tasks_whose_folder_names_only_full_case_folding_makes_equal_are_two_folders(first, second):
    """str.casefold() took them for one folder, "differing only in case": no file system compares names that way."""
    from gr00t_eval.suites import check_task_video_dirs

    check_task_video_dirs([Task(first, "g"), Task(second, "g")])


def test_run_suite_refuses_tasks_sharing_a_video_folder_before_any_episode_and_others_keep_their_folders(client, tmp_path):
    from gr00t_eval.suites import task_video_dir

    with pytest.raises(ValueError, match="tasks 'walkto/x/fast' and 'walkto/x__fast' would write"):
        run_suite(client, "walkto/x/fast,walkto/x__fast", config(n_episodes=1, video_dir=str(tmp_path)))
    assert not list(tmp_path.iterdir())
    assert task_video_dir(str(tmp_path), "metaworld/reach-v3", True) == str(tmp_path / "metaworld__reach-v3")


@pytest.mark.parametrize("env_name", [".", "..", "a\\b"])
def test_a_task_folder_name_is_one_folder_below_the_video_folder(tmp_path, env_name):
    from gr00t_eval.suites import task_folder_name, task_video_dir

    folder = task_folder_name(env_name)
    assert folder not in (".", "..") and "/" not in folder and "\\" not in folder
    assert os.path.dirname(os.path.normpath(task_video_dir(str(tmp_path), env_name, True))) == str(tmp_path)


def camera_prefix(monkeypatch, prefix="cam"):
    from eval.scale_fixtures import CameraWalkEnv
    from gr00t_client import EmbodimentTag
    from gr00t_eval.rollout import envs

    monkeypatch.setitem(envs.ENV_PREFIX_TO_EMBODIMENT_TAG, prefix, EmbodimentTag.NEW_EMBODIMENT)
    monkeypatch.setitem(envs._ADAPTERS, prefix, lambda task, **kwargs: CameraWalkEnv(2.0))


LONG_TASK = "cam/" + "\u00e9" * 130  # its folder cam__ee..e: 265 bytes in UTF-8, over the 255 a file name may have


@pytest.mark.parametrize("bad_task, why", [
    (LONG_TASK, "is too long for the name of its video folder (265 bytes in UTF-8; a folder name may have at most 255)"),
    ("cam/a\x00b", "holds a NUL character, which no folder name may"),
])
def test_run_suite_refuses_a_task_whose_video_folder_cannot_be_named_before_any_episode(tmp_path, monkeypatch, bad_task,
                                                                                      why):
    """The task failed with 'File name too long' (or 'embedded null byte') only when its turn came, after the others
    had run."""
    from eval.scale_fixtures import ConstantPolicy

    camera_prefix(monkeypatch)
    videos = tmp_path / "videos"
    with pytest.raises(ValueError, match=re.escape(why)) as refused:
        run_suite(ConstantPolicy(), f"cam/short,{bad_task}", config(n_episodes=1, n_envs=1, video_dir=str(videos)))
    assert str(refused.value).startswith("task 'cam/")
    assert not videos.exists() or not list(videos.rglob("*.mp4"))


def test_a_long_task_run_alone_writes_its_videos_into_the_video_folder_itself(tmp_path, monkeypatch):
    from eval.scale_fixtures import ConstantPolicy

    camera_prefix(monkeypatch)
    results = run_suite(ConstantPolicy(), LONG_TASK, config(n_episodes=1, n_envs=1, video_dir=str(tmp_path)))
    assert results["failed_tasks"] == {} and len(list(tmp_path.glob("*.mp4"))) == 1


def test_the_videos_of_tasks_named_dot_and_dot_dot_stay_inside_the_video_folder(tmp_path, monkeypatch):
    """gymnasium takes '..' as an env id (and register_env_prefix as a prefix): its videos went to the folder's parent."""
    from eval.scale_fixtures import CameraWalkEnv, ConstantPolicy
    from gr00t_client import EmbodimentTag
    from gr00t_eval.rollout import envs

    for name in (".", ".."):
        monkeypatch.setitem(envs.ENV_PREFIX_TO_EMBODIMENT_TAG, name, EmbodimentTag.NEW_EMBODIMENT)
        monkeypatch.setitem(envs._ADAPTERS, name, lambda task, **kwargs: CameraWalkEnv(2.0))
    videos = tmp_path / "runs" / "videos"
    results = run_suite(ConstantPolicy(), ".,..", config(n_episodes=1, n_envs=1, video_dir=str(videos)))
    assert results["failed_tasks"] == {}
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.mp4")) == [
        "runs/videos/_/episode_0000_success.mp4", "runs/videos/__/episode_0000_success.mp4"]


@pytest.mark.sim
@pytest.mark.slow
def test_two_metaworld_tasks_are_aggregated_per_task_group_and_overall():
    pytest.importorskip("metaworld")
    from gr00t_client import BasePolicy, ModalityConfig
    from gr00t_eval.rollout.adapters.metaworld import LANGUAGE_KEY

    class StandStill(BasePolicy):
        def __init__(self):
            super().__init__(strict=False)

        def get_modality_config(self):
            return {"state": ModalityConfig([0], ["eef_pos"]), "action": ModalityConfig([0, 1, 2, 3], ["eef_delta", "gripper"]),
                    "language": ModalityConfig([0], [LANGUAGE_KEY])}

        def _get_action(self, observation, options=None):
            batch = len(observation[LANGUAGE_KEY])
            return {"action.eef_delta": np.zeros((batch, 4, 3), np.float32), "action.gripper": np.zeros((batch, 4, 1), np.float32)}, {}

        def reset(self, options=None):
            return {}

    results = run_suite(StandStill(), "metaworld/reach-v3,metaworld/push-v3",
                        config(n_episodes=2, n_envs=1, n_action_steps=4, max_episode_steps=8, seed=0))
    assert results["failed_tasks"] == {}
    per_task = results["per_task"]
    assert [per_task[t]["n_episodes"] for t in per_task] == [2, 2]
    assert set(results["per_group"]) == {"metaworld"}
    rewards = [e["sum_reward"] for e in results["per_episode"]]
    assert results["overall"]["avg_sum_reward"] == pytest.approx(np.mean(rewards))
    assert per_task["metaworld/reach-v3"]["avg_sum_reward"] == pytest.approx(np.mean(rewards[:2]))


@pytest.mark.parametrize("tasks, message", [
    ("walkto/fast", r"suite 'bad': tasks must be a list of env names, got the string 'walkto/fast'"),
    (["walkto/fast", ""], r"suite 'bad': a task needs a non-empty env name and group, got ''"),
    ([("walkto/fast", " ")], r"suite 'bad': a task needs a non-empty env name and group, got \('walkto/fast', ' '\)"),
    ([("walkto/fast",)], r"suite 'bad': a task must be an env name, an \(env_name, group\) pair .*got \('walkto/fast',\)"),
    ([("walkto/fast", "easy", "x")], r"suite 'bad': a task must be an env name, an \(env_name, group\) pair"),
])
def test_register_suite_refuses_a_string_empty_names_or_malformed_pairs_naming_what_was_given(tasks, message):
    with pytest.raises((TypeError, ValueError), match=message):
        register_suite("bad", tasks, replace=True)
    assert "bad" not in suite_names()


@pytest.mark.parametrize("name, tasks, message", [
    ("smoke ", ["walkto/fast"], r"a suite name must have no leading or trailing whitespace, got 'smoke '"),
    ("bad", ["walkto/fast "], r"suite 'bad': a task's env name must have no leading or trailing whitespace, got "
                              r"'walkto/fast '"),
], ids=["suite-name", "env-name"])
def test_register_suite_refuses_names_with_surrounding_whitespace_naming_them(monkeypatch, name, tasks, message):
    """'smoke ' was registered, and --env-name (which strips each name) could never select it."""
    from gr00t_eval import suites

    monkeypatch.setattr(suites, "_SUITES", dict(suites._SUITES))  # registered for this test only
    with pytest.raises(ValueError, match=message + r".*--env-name strips the whitespace around each name"):
        register_suite(name, tasks)
    assert name not in suite_names()


def test_register_suite_takes_env_names_pairs_and_tasks(monkeypatch):
    from gr00t_eval import suites

    monkeypatch.setattr(suites, "_SUITES", dict(suites._SUITES))  # registered for this test only
    suite = register_suite("mixed", ["walkto/fast", ("walkto/slow", "hard"), Task("walkto/x", "x")], replace=True)
    assert suite.tasks == (Task("walkto/fast", "walkto"), Task("walkto/slow", "hard"), Task("walkto/x", "x"))


def test_register_suite_refuses_an_env_name_given_twice_naming_it_and_both_groups(monkeypatch):
    from gr00t_eval import suites

    monkeypatch.setattr(suites, "_SUITES", dict(suites._SUITES))  # registered for this test only
    with pytest.raises(ValueError, match=r"suite 'dup': 'metaworld/reach-v3' is listed twice \(in groups 'easy' and "
                                         r"'hard'\); a rollout runs each env name once"):
        register_suite("dup", [("metaworld/reach-v3", "easy"), ("metaworld/push-v3", "hard"),
                               ("metaworld/reach-v3", "hard")])
    assert "dup" not in suite_names()


def test_no_built_in_suite_lists_an_env_name_twice():
    for name in suite_names():
        env_names = [task.env_name for task in get_suite(name).tasks]
        assert len(env_names) == len(set(env_names)), name


@pytest.fixture
def user_suite_module(tmp_path, monkeypatch):
    """The name of a module on sys.path that registers the suite 'mine' (for this test only), as a user's would."""
    from gr00t_eval import suites

    monkeypatch.setattr(suites, "_SUITES", dict(suites._SUITES))
    (tmp_path / "user_suite_for_listing.py").write_text(
        "from gr00t_eval.suites import register_suite\n"
        "register_suite('mine', [('walkto/fast', 'easy'), ('walkto/slow', 'hard')], 'a user suite', replace=True)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "user_suite_for_listing", raising=False)
    return "user_suite_for_listing"


def test_suites_lists_the_suites_an_env_import_module_registers(user_suite_module, capsys):
    """`suites` took no --env-import, so the suites a rollout accepted with one could not be listed."""
    from gr00t_eval import cli

    assert cli.main(["suites", "--env-import", user_suite_module]) == 0
    listed = capsys.readouterr().out
    assert "mine: 2 tasks (easy, hard). a user suite" in listed
    assert "metaworld-mt10: 10 tasks" in listed


def test_the_rollout_hint_for_a_near_miss_of_a_user_suite_names_the_listing_that_shows_it(user_suite_module, capsys):
    from gr00t_eval import cli

    assert cli.main(["rollout", "--env-name", "mie", "--env-import", user_suite_module, "--policy-client-port", "9",
                     "--no-video"]) == 2
    err = capsys.readouterr().err
    assert "or did you mean the suite mine? (gr00t-eval suites lists them; with --env-import MODULE, those MODULE " \
           "registers too)" in err
