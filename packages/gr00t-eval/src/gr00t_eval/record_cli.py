"""`gr00t-eval record`: Meta-World expert episodes recorded with record.record_metaworld; a mistake in the flags, a
stop or a full disk is told in one line that says what the output folder now holds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from .cli_errors import UsageError


def _left_before_recording(output: str, summary: Any) -> str:
    """What a recording stopped before its first episode left in `output`: --overwrite may have removed the old dataset."""
    removed = summary.old_dataset_removed if summary is not None else []
    if not removed:
        return f"{output} was left as it was"
    remaining = [name for name in ("meta", "data", "videos") if (Path(output) / name).exists()]
    if remaining:
        return (f"--overwrite had removed {', '.join(f'{name}/' for name in removed)} of the old dataset in {output} "
                f"({', '.join(f'{name}/' for name in remaining)} remain: not a loadable dataset)")
    return f"--overwrite had removed the old dataset in {output}, which holds no dataset now"


def _summary_from_meta(output: str) -> Optional[Any]:
    """What a stop that lost its summary (a Ctrl-C in the cleanup) left in `output`, read from meta/; None unless this
    process claimed the folder (else the recording had not begun)."""
    from .dataset.overwrite import RECORD_CLAIM
    from .record import RecordSummary
    from .run_claim import holds_claim

    root = Path(output).absolute()
    if not holds_claim(root / RECORD_CLAIM):
        return None
    try:
        lines = (root / "meta" / "episodes.jsonl").read_text().splitlines()
        listed = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):  # no episode listed yet
        listed = []
    return RecordSummary(root, seeds=[episode.get("seed") for episode in listed], started=True)


def _stopped_by_failure(output: str, exc: BaseException) -> Optional[str]:
    """The error line for a failure that stopped a recording under way (an env's NaN state, a reset that raises): the
    episode and seed it stopped at, why, and what `output` holds; None for one before recording began (a flag)."""
    summary = getattr(exc, "record_summary", None)
    if summary is None or not summary.started:
        return None
    why = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    stopped_at = getattr(exc, "record_stopped_at", None)
    where = f" at episode {stopped_at[0]} (seed {stopped_at[1]})" if stopped_at is not None else ""
    state = (f"{output} holds the {summary.n_episodes} episodes finished before it (a loadable dataset)"
             if summary.n_episodes else f"{output} holds no finished episode (not a loadable dataset)")
    return f"recording stopped{where}: {why}; {state}"


def cmd_record(args: argparse.Namespace) -> int:
    """`gr00t-eval record`: Meta-World expert episodes into a LeRobot v2.1 dataset."""
    from .record import record_metaworld

    for flag, value in (("--output", args.output), ("--camera", args.camera)):
        if value is not None and not str(value).strip():  # '' was the current folder, or silently the default camera
            raise UsageError(f"{flag} must not be empty")

    try:
        summary = record_metaworld(
            args.env_name, args.episodes, args.output, seed=args.seed, max_episode_steps=args.max_episode_steps,
            image_size=args.image_size, camera=args.camera, overwrite=args.overwrite,
        )
    except KeyboardInterrupt as exc:
        from .run_stop import stop_signals_ignored_until_exit

        # meta/ lists what was saved: more Ctrl-Cs of a burst only interrupted this line, or the progress bar's __del__
        # as the stop's traceback went ('Exception ignored in ... tqdm.__del__')
        stop_signals_ignored_until_exit()
        # what this run finished (the folder may hold an older dataset); meta/ says, if a Ctrl-C in the cleanup lost it
        summary = getattr(exc, "record_summary", None) or _summary_from_meta(args.output)
        if summary is None or not summary.started:
            print(f"INTERRUPTED before recording began: {_left_before_recording(args.output, summary)}")
        elif summary.n_episodes:
            print(f"INTERRUPTED: {args.output} holds the {summary.n_episodes} episodes finished before the interrupt "
                  "(a loadable dataset)")
        else:
            print(f"INTERRUPTED: {args.output} holds no finished episode (not a loadable dataset)")
        raise
    except FileExistsError as exc:
        message = str(exc).replace(" (pass overwrite=True to replace it)", "")  # the writer's hint is for its API
        raise SystemExit(f"error: {message}" if args.overwrite or "not empty" not in message
                         else f"error: {message}; add --overwrite to replace it") from None
    except OSError as exc:  # a full disk mid-recording: say what the folder now holds
        from .run_stop import OutputFolderGone, is_storage_line, storage_advice, storage_error_text

        summary = getattr(exc, "record_summary", None)
        if isinstance(exc, OutputFolderGone):
            raise SystemExit(f"error: the output folder {args.output} disappeared (unmounted or deleted) while the "
                             "recording wrote to it: the recording stopped, and wrote nothing more; record again into "
                             "a folder that is there") from None
        if summary is None and isinstance(exc, FileNotFoundError) and not exc.filename:
            raise SystemExit(f"error: {exc}") from None  # record's own words (a dangling --output link)
        advice = f". {storage_advice(exc)}, then run the same command again" if is_storage_line(exc) else ""
        if summary is None or not summary.started:
            if not advice:
                raise
            raise SystemExit(f"error: {storage_error_text(exc)}: recording did not start; "
                             f"{_left_before_recording(args.output, summary)}{advice}") from None
        state = (f"{args.output} holds the {summary.n_episodes} episodes finished before it (a loadable dataset)"
                 if summary.n_episodes else f"{args.output} holds no finished episode (not a loadable dataset)")
        if advice and not args.overwrite:  # the same command again is refused: the folder is not empty now
            advice = f". {storage_advice(exc)}, then run the same command with --overwrite to record anew"
        raise SystemExit(f"error: {storage_error_text(exc)}: recording stopped; {state}{advice}") from None
    except ValueError as exc:  # the checks name record_metaworld's parameters; here they are flags
        stopped = _stopped_by_failure(args.output, exc)
        if stopped is not None:  # not a flag's mistake (exit 2): the recording failed under way
            print(f"gr00t-eval record: error: {stopped}", file=sys.stderr)
            return 1
        message = str(exc)
        for parameter, flag in (("n_episodes", "--episodes"), ("max_episode_steps", "--max-episode-steps"),
                                ("image_size", "--image-size"), ("seed + n_episodes", "--seed + --episodes"),
                                ("seed", "--seed"), ("camera", "--camera")):
            if message.startswith(parameter + " "):
                message = flag + message[len(parameter):]
        raise SystemExit(f"error: {message}") from None
    except Exception as exc:  # noqa: BLE001 - an env failure under way (a reset that raises): main's line lacks where
        stopped = _stopped_by_failure(args.output, exc)
        if stopped is None:
            raise
        print(f"gr00t-eval record: error: {stopped}", file=sys.stderr)
        return 1
    print(f"Recorded {summary.n_episodes} episodes of {args.env_name} to {summary.root} "
          f"(seeds {summary.seeds[0]}..{summary.seeds[-1]}, expert success {sum(summary.successes)}/{summary.n_episodes}, "
          f"mean length {sum(summary.lengths) / summary.n_episodes:.1f})")
    return 0
