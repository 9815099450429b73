"""`gr00t-eval record`: Meta-World expert episodes recorded with record.record_metaworld; a mistake in the flags, a
stop or a full disk is told in one line that says what the output folder now holds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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
        summary = getattr(exc, "record_summary", None)  # what this run finished (the folder may hold an older dataset)
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
        message = str(exc)
        for parameter, flag in (("n_episodes", "--episodes"), ("max_episode_steps", "--max-episode-steps"),
                                ("image_size", "--image-size"), ("seed + n_episodes", "--seed + --episodes"),
                                ("seed", "--seed"), ("camera", "--camera")):
            if message.startswith(parameter + " "):
                message = flag + message[len(parameter):]
        raise SystemExit(f"error: {message}") from None
    print(f"Recorded {summary.n_episodes} episodes of {args.env_name} to {summary.root} "
          f"(seeds {summary.seeds[0]}..{summary.seeds[-1]}, expert success {sum(summary.successes)}/{summary.n_episodes}, "
          f"mean length {sum(summary.lengths) / summary.n_episodes:.1f})")
    return 0
