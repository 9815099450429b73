"""What a rollout or a merge prints at its end: the per-task, per-group and overall table, the errored episodes and
the INCOMPLETE line, and the exit status that follows from its errors."""

from __future__ import annotations

from typing import Any, List, Mapping

from gr00t_client.peer_text import shown_text

from .metrics import ERROR_REASON_CHARS


def _table(rows: List[List[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


_MOST_DECIMALS = 6  # of a success percentage that rounds to 0 or 100 at fewer


def percent_text(value: Any) -> str:
    """A success percentage for a table: one decimal, more where one would round a run with a failure up to 100.0 or
    one with a success down to 0.0 (1 failure in 2001 episodes is 99.95, not 100.0); "-" for none."""
    if not isinstance(value, (int, float)) or value != value:
        return "-"
    for decimals in range(1, _MOST_DECIMALS + 1):
        text = f"{value:.{decimals}f}"
        if value in (0, 100) or float(text) not in (0.0, 100.0):
            return text
    step = 10.0 ** -_MOST_DECIMALS
    return f">{100 - step:.{_MOST_DECIMALS}f}" if value > 50 else f"<{step:.{_MOST_DECIMALS}f}"



def _row(name: str, kind: str, agg: Mapping[str, Any]) -> List[str]:
    def fmt(key: str, spec: str) -> str:
        value = agg.get(key)
        return spec.format(value) if isinstance(value, (int, float)) and value == value else "-"

    return [shown_text(str(name)), kind, fmt("n_episodes", "{:d}"), percent_text(agg.get("pc_success")),
            fmt("avg_sum_reward", "{:.3f}"), fmt("avg_max_reward", "{:.3f}"), fmt("eval_s", "{:.1f}")]


def format_summary(results: Mapping[str, Any]) -> str:
    """Per-task, per-group and overall rows of a suite results dict."""
    rows = [["name", "level", "episodes", "success %", "avg_sum_reward", "avg_max_reward", "eval_s"]]
    rows += [_row(task, "task", agg) for task, agg in results["per_task"].items()]
    if len(results["per_group"]) > 1 or len(results["per_task"]) > 1:
        rows += [_row(group, "group", agg) for group, agg in results["per_group"].items()]
    rows.append(_row("overall", "overall", results["overall"]))
    text = _table(rows)
    for task, reason in results.get("failed_tasks", {}).items():
        # the reason is raw in older results files
        text += f"\ntask {shown_text(str(task))} failed: {shown_text(str(reason), ERROR_REASON_CHARS)}"
    return text


def errors_exit(results: Mapping[str, Any], n_errors: int, allow_errors: bool) -> int:
    """The exit status of a complete run or merge `results` with `n_errors` errored episodes: 1 when nothing was
    scored, or a task scored nothing, even with --allow-errors (a CI passing it to tolerate a flaky episode went green
    on a run that measured nothing, or a task whose every episode errored)."""
    if n_errors and not any(not entry.get("error") for entry in results["per_episode"]):
        print("exit status 1 because every episode errored: nothing was scored (--allow-errors tolerates some errors, "
              "not a run without a result)")
        return 1
    unscored = unscored_tasks(results)
    if n_errors and unscored:
        print(f"exit status 1 because every episode of {', '.join(map(shown_text, unscored))} errored: "
              f"{'that task has' if len(unscored) == 1 else 'those tasks have'} no result (--allow-errors tolerates "
              "some errors, not a task without a result)")
        return 1
    if n_errors and not allow_errors:
        print("exit status 1 because episodes errored (pass --allow-errors to exit 0 anyway)")
        return 1
    return 0


def unscored_tasks(results: Mapping[str, Any]) -> List[str]:
    """The tasks of `results` whose every episode that ran errored (a shard's tasks with no episodes in it aside)."""
    return [task for task, agg in (results.get("per_task") or {}).items()
            if not agg.get("n_episodes") and agg.get("n_errors")]


def print_errored_episodes(results: Mapping[str, Any]) -> None:
    """One `episode <i> [of <task>] errored: <reason>` line per errored episode (its reason escaped and cut to
    ERROR_REASON_CHARS: results of an older gr00t-eval saved an env's error as it was)."""
    for entry in results["per_episode"]:
        if entry.get("error"):
            reason = shown_text(str(entry["error"]), ERROR_REASON_CHARS)
            task = f" of {shown_text(str(entry['task']))}" if entry.get("task") else ""
            print(f"episode {entry['episode_index']}{task} errored: {reason}")


def print_incomplete(results: Mapping[str, Any]) -> int:
    """The `INCOMPLETE: k of n episodes errored` line when episodes errored; returns k."""
    n_errors, n_run = results["overall"]["n_errors"], len(results["per_episode"])
    if n_errors:
        print(f"INCOMPLETE: {n_errors} of {n_run} episodes errored; the metrics above are over the {n_run - n_errors} that finished")
    return n_errors
