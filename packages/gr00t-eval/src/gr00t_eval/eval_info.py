"""eval_info.json in lerobot-eval's field names, from a rollout's results.json, for scripts that already parse it.

lerobot-eval writes `per_episode` ({episode_ix, sum_reward, max_reward, success, seed}), `per_task` (a list of
{task_group, task_id, metrics: {sum_rewards, max_rewards, successes, video_paths}}), `per_group` and `overall`
({avg_sum_reward, avg_max_reward, pc_success, n_episodes, eval_s, eval_ep_s, video_paths}). Only episodes that
finished without an error are listed and counted (lerobot has no notion of an errored episode); they are
reported beside, in `n_errors` and `errored_episodes`, together with the run's `status`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

EVAL_INFO_FILENAME = "eval_info.json"


def _aggregate(entry: Mapping[str, Any], video_paths: List[str]) -> Dict[str, Any]:
    return {
        "avg_sum_reward": entry.get("avg_sum_reward"),
        "avg_max_reward": entry.get("avg_max_reward"),
        "pc_success": entry.get("pc_success"),
        "n_episodes": entry.get("n_episodes", 0),
        "eval_s": entry.get("eval_s"),
        "eval_ep_s": entry.get("eval_ep_s"),
        "n_errors": entry.get("n_errors", 0),
        "video_paths": video_paths,
    }


def lerobot_eval_info(results: Mapping[str, Any]) -> Dict[str, Any]:
    """The eval_info.json dict of a rollout results dict (suite_results' shape)."""
    episodes = results.get("per_episode", [])
    finished = [e for e in episodes if not e.get("error")]
    task_ids: Dict[str, int] = {}
    groups: Dict[str, str] = {}
    for task in results.get("tasks", []):
        groups[task["env_name"]] = task["group"]
        task_ids[task["env_name"]] = sum(1 for g in groups.values() if g == task["group"]) - 1
    per_task = []
    for name, entry in results.get("per_task", {}).items():
        mine = [e for e in finished if e.get("task") == name]
        per_task.append({
            "task_group": entry.get("group", groups.get(name)),
            "task_id": task_ids.get(name, 0),
            "task": name,
            "metrics": {
                "sum_rewards": [e["sum_reward"] for e in mine],
                "max_rewards": [e["max_reward"] for e in mine],
                "successes": [bool(e["success"]) for e in mine],
                "video_paths": [e["video_path"] for e in mine if e.get("video_path")],
            },
        })
    per_group = {
        group: _aggregate(entry, [e["video_path"] for e in finished if e.get("group") == group and e.get("video_path")])
        for group, entry in results.get("per_group", {}).items()
    }
    return {
        "per_episode": [
            {"episode_ix": e["episode_index"], "sum_reward": e["sum_reward"], "max_reward": e["max_reward"],
             "success": bool(e["success"]), "seed": e["seed"], "task": e.get("task"), "task_group": e.get("group")}
            for e in finished
        ],
        "per_task": per_task,
        "per_group": per_group,
        "overall": _aggregate(results.get("overall", {}), [e["video_path"] for e in finished if e.get("video_path")]),
        "status": results.get("status", "complete"),
        "stop_reason": results.get("stop_reason"),
        "n_errors": len(episodes) - len(finished),
        "n_not_run": results.get("n_not_run", 0),  # episodes of the plan that never ran (failed tasks, a stop)
        "failed_tasks": dict(results.get("failed_tasks") or {}),
        "errored_episodes": [{"episode_ix": e["episode_index"], "task": e.get("task"), "seed": e["seed"], "error": e["error"]}
                             for e in episodes if e.get("error")],
    }
