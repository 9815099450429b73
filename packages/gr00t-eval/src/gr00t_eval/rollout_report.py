"""A rollout's end: write results.json and eval_info.json, print the summary and the reference's lines, and pick the
exit status; the one-line errors for a run stopped by a full disk."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .rollout_args import _registration_flags
from .run_stop import OutputFolderGone, storage_advice
from .run_summary import errors_exit, format_summary, print_errored_episodes, print_incomplete


def _kept_episodes(output_dir: Path, shard: Any) -> Tuple[Path, int]:
    """The run's episode log and how many episodes it keeps (0 when it cannot be read)."""
    from .episode_log import EpisodeLog
    from .output_files import episode_log_name

    log = output_dir / episode_log_name(shard)
    try:
        return log, len(EpisodeLog(log).read())
    except (OSError, ValueError):
        return log, 0


def _storage_failure(exc: OSError, output_dir: Path, shard: Any, flags: str = "") -> str:
    """The one line for a run stopped by a full disk: the file, what is kept, and the command that continues (`flags`:
    the run's registration flags, which a resume must give again)."""
    from .output_files import run_file_name
    from .run_resume import resume_command

    if isinstance(exc, OutputFolderGone):
        folder = exc.filename if exc.what != OutputFolderGone.what else output_dir  # a --video-dir outside it, or it
        return (f"error: the {exc.what} {folder} disappeared (unmounted or deleted) while the run wrote to it: "
                "the run stopped, and wrote nothing more. If the folder comes back (a share mounted again), continue "
                f"with: {resume_command(output_dir, shard)}{flags} and the same server flags; else start a new run")
    where = f" writing {exc.filename}" if exc.filename else ""
    if not (output_dir / run_file_name(shard)).is_file():  # released (rollout_output._release_unstarted_run)
        return (f"error: {exc.strerror or exc}{where}: the run stopped before it scored an episode and left no run in "
                f"{output_dir} to resume. {storage_advice(exc)}, then run the same command again")
    log, kept = _kept_episodes(output_dir, shard)
    return (f"error: {exc.strerror or exc}{where}: the run stopped there; the {kept} episodes scored before it are kept "
            f"in {log}. {storage_advice(exc)}, then continue with: {resume_command(output_dir, shard)} and the same "
            "server flags (and --env-import/--env-adapter/--env-prefix, if the run used them)")


def _start_storage_failure(exc: OSError) -> str:
    """The one line for a run whose output folder could not be claimed (a disk full from the start)."""
    where = f" writing {exc.filename}" if exc.filename else ""
    return (f"error: {exc.strerror or exc}{where}: the run did not start. {storage_advice(exc)}, then run the same "
            "command again")


def _summary_storage_failure(exc: OSError, files: List[Path], output_dir: Path, shard: Any) -> str:
    """The one line for a run whose episodes were all saved but whose results files could not be written."""
    from .run_resume import resume_command

    log, kept = _kept_episodes(output_dir, shard)
    names = " and ".join(p.name for p in files)
    where = f" writing {exc.filename}" if exc.filename else ""
    were, left = ("were", "any from an earlier attempt are left as they were") if len(files) > 1 else \
        ("was", "one from an earlier attempt is left as it was")
    return (f"error: {exc.strerror or exc}{where}: {names} {were} not written ({left}); "
            f"the {kept} episodes scored are kept in {log}, and are not run again. {storage_advice(exc)}, then "
            f"continue with: {resume_command(output_dir, shard)} (it writes {names}) and the same server flags "
            "(and --env-import/--env-adapter/--env-prefix, if the run used them)")


def _report_rollout(args: argparse.Namespace, results: Dict[str, Any], output_dir: Path, shard: Any) -> int:
    """Write results.json and eval_info.json, print the summary and the reference's lines; return the exit code."""
    from .eval_info import EVAL_INFO_FILENAME, lerobot_eval_info
    from .output_files import results_file_name
    from .results import write_results_together
    from .run_dir import remove_merges_of
    from .run_stop import SAVED_NOTE, interrupts_deferred, is_storage_error, stop_signals_ignored_until_exit

    files = [(output_dir / results_file_name(shard), results)]
    if shard is None:
        files.append((output_dir / EVAL_INFO_FILENAME, lerobot_eval_info(results)))
    with interrupts_deferred():  # a second Ctrl-C while an interrupted run saves its results must not lose them
        try:  # both or neither: a full disk never leaves a new results.json beside an earlier attempt's eval_info.json
            path = write_results_together(files)[0]
        except OSError as exc:
            if not is_storage_error(exc):
                raise
            raise SystemExit(_summary_storage_failure(exc, [p for p, _r in files], output_dir, shard)) from None
        if shard is not None:  # a merge of its earlier results written while it ran (it checked the claim before
            remove_merges_of(output_dir, results_file_name(shard))  # the shard took it) reports what no file holds now
    with interrupts_deferred(SAVED_NOTE):  # saved: a stop now turned a complete run's exit 130, its claim 'interrupted'
        code = _print_report(args, results, output_dir, shard, path)
        stop_signals_ignored_until_exit()  # reported too: the exit status and claim stay the results' (cli.main)
        return code


def _print_report(args: argparse.Namespace, results: Dict[str, Any], output_dir: Path, shard: Any, path: Path) -> int:
    """Print the summary of the results saved at `path` and the reference's lines; return the exit code."""
    import numpy as np

    from .run_resume import resume_command
    from .run_stop import INTERRUPTED_EXIT_CODE

    overall = results["overall"]
    episodes = results["per_episode"]
    print(f"Collecting {len(episodes)} episodes took {overall['eval_s']:.2f} seconds")
    video_dir = results["config"].get("video_dir")
    if video_dir:
        if results.get("video_paths"):
            print("Video saved to: ", video_dir)
        elif not episodes:  # it said "Video saved to" over a folder holding only the stopped episodes' partial files
            from .video import episode_videos

            present = episode_videos(video_dir)  # "none was written" over a folder holding some was false
            print(f"No episode video was written to {video_dir} (no episode was scored)" if not present else
                  f"No video of a scored episode is in {video_dir} (no episode was scored; the {len(present)} episode "
                  "videos there are of no episode in the results)")
        elif results["config"].get("max_episodes_rendered") == 0:
            print(f"No episode video was written to {video_dir} (--max-episodes-rendered 0)")
        else:  # it said "Video saved to" over a folder no video could be written to
            print(f"No episode video was written to {video_dir} (see the errors above)")
    print(format_summary(results))
    print_errored_episodes(results)
    finished = [e for e in episodes if not e.get("error")]
    infos = {"episode_lengths": [e["length"] for e in finished], "episode_rewards": [e["sum_reward"] for e in finished]}
    print("results: ", (results["env_name"], [bool(e["success"]) for e in finished], infos))
    print("success rate: ", float(np.mean([e["success"] for e in finished])) if finished else "n/a (no episode finished)")
    n_errors = print_incomplete(results)
    status = results.get("status", "complete")
    not_run = results.get("n_not_run", 0)
    if status != "complete":
        reason = str(results.get("stop_reason"))
        # Ray's reason names them; a stop after the last episode left none
        count = "" if not not_run or f"{not_run} episodes did not run" in reason else f"; {not_run} episodes did not run"
        advice = ("(its episodes are two policies', so it cannot be resumed: serve one checkpoint or dataset on every "
                  "server and start a new run)" if results.get("policy_conflict") else
                  f"(continue with: {resume_command(output_dir, shard)}"
                  f"{' --ray-address ' + args.ray_address if args.ray_address else ''}{_registration_flags(args)} and "
                  "the same server flags)")
        print(f"{status.upper()}: {reason}{count} {advice}")
    print(f"Results: {path}")
    if status == "interrupted":
        return INTERRUPTED_EXIT_CODE
    if status != "complete" or results["failed_tasks"] or results.get("failed_shards"):
        return 1
    return errors_exit(results, n_errors, args.allow_errors)
