"""`gr00t-eval merge`: shard results files combined into the results of one run, written with its eval_info.json."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .run_summary import errors_exit, format_summary, print_errored_episodes, print_incomplete

logger = logging.getLogger(__name__)


def _read_results_file(path: Path) -> Dict[str, Any]:
    """A results file's contents; UsageError naming the file when it is not one (truncated, not JSON, not a map)."""
    import json

    from .cli_errors import UsageError
    from .results import load_results

    try:
        results = load_results(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a readable results file ({type(exc).__name__}: {exc}); was its run killed "
                         "while writing it? Resume that run or shard to write it again") from None
    if not isinstance(results, dict):
        raise UsageError(f"{path}: not a results file (its JSON is a {type(results).__name__}, not an object)")
    return results


def _results_files(paths: List[str], output: Path) -> List[Path]:
    """The shard results to merge, each file once: files given, or results*.json in directories, skipping earlier
    merges' outputs there; UsageError when the --output is one of them (the merge would replace a shard's results)."""
    from .cli_errors import UsageError

    files: List[Path] = []
    for candidate in _candidate_files(paths):
        if candidate.resolve() == output.resolve():
            raise UsageError(f"--output {output} is also one of the files to merge; the merge would replace it. "
                             "Name another --output")
        if candidate.resolve() in (f.resolve() for f in files):
            logger.info("skipping %s: it is already among the files to merge", candidate)
            continue
        files.append(candidate)
    if not files:
        raise UsageError(f"no shard results (results*.json) in {', '.join(paths)}{_unfinished_shards_hint(paths)}")
    return files


def _candidate_files(paths: List[str]) -> List[Path]:
    """The files given, and the results*.json of the directories given that are not an earlier merge's output."""
    from .cli_errors import UsageError

    candidates: List[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            for candidate in sorted(item.glob("results*.json")):
                if "merged_from" in _read_results_file(candidate):
                    logger.info("skipping %s: it is the output of a merge", candidate)
                    continue
                candidates.append(candidate)
        elif item.is_file():
            candidates.append(item)
        else:
            raise UsageError(f"{item}: no such results file or directory")
    return candidates


def _unfinished_shards_hint(paths: List[str]) -> str:
    """'; shard 1/2 ... started and has no results file ...' for every shard of the given directories that started
    (its run file is there) and wrote no results: still running, or killed. Empty when there is none."""
    from .output_files import results_file_name, run_file_name, started_shards
    from .rollout_args import _recorded_registration_flags
    from .run_file import read_run_file
    from .run_resume import resume_command
    from .shard import ShardSpec, shard_folder

    unfinished = []
    for directory in (Path(p) for p in paths if Path(p).is_dir()):
        for index, count in started_shards(directory):
            shard = ShardSpec(index, count)
            if not (directory / results_file_name(shard)).exists():
                try:  # a resume is held to the shard's own registration flags: without them it is refused
                    flags = _recorded_registration_flags(read_run_file(directory, shard))
                except (OSError, ValueError):  # an unreadable run file (OutputDirError): the resume says why
                    flags = ""
                # where its run file really is: in a folder of links to each node's files, a resume of the links'
                # folder would copy the run file there and leave the node's folder unfinished
                home = shard_folder(str(directory / run_file_name(shard)))
                unfinished.append(f"shard {shard} in {directory} started and has no results file (still running, or "
                                  f"killed: continue it with {resume_command(home, shard)}{flags})")
    return "; " + "; ".join(unfinished) if unfinished else ""


def _shard_of(results: Dict[str, Any]) -> Any:
    """The ShardSpec a shard's results record in plan.shard; None for a whole run, a merge or a malformed plan (which
    merge_results names)."""
    from .shard import ShardSpec

    plan = results.get("plan")
    shard = plan.get("shard") if isinstance(plan, dict) and "merged_from" not in results else None
    try:
        return ShardSpec(*shard) if isinstance(shard, list) and len(shard) == 2 else None
    except (TypeError, ValueError):
        return None


def _running_shards_left_out(files: List[Path], allow_missing: bool) -> List[Tuple[Path, Dict[str, Any]]]:
    """Each of `files` with its results, less those of a shard whose run file holds a live claim (its run, or a
    --resume of it, has not ended): it writes its results again, so the file now there is no final result. The shard
    is the one its results name (plan.shard), its run file the one beside the file itself (links resolved), whatever
    the name it is given by. UsageError naming that shard; with `allow_missing` its file is left out (its episodes
    are missing, the merge incomplete) and a line says so."""
    import socket

    from .cli_errors import UsageError
    from .output_files import OutputDirError, run_file_name
    from .rollout_args import _recorded_registration_flags
    from .run_claim import (HOLDER_UNKNOWN, holder_state, holder_unchecked, read_holder, refuse_live_claim,
                            release_advice)
    from .run_file import read_run_file
    from .run_resume import resume_command

    kept = []
    for file in files:
        results = _read_results_file(file)
        shard = _shard_of(results)
        if shard is None:
            kept.append((file, results))
            continue
        folder = file.resolve().parent
        run_file = folder / run_file_name(shard)
        try:
            refuse_live_claim(folder, run_file.name, flag="the folder", quiet=True)
        except OutputDirError as exc:
            holder = read_holder(run_file)
            # its alive lock held: running, wherever it runs (no advice to mark the claim of a running shard finished)
            here = holder is None or holder_state(holder, run_file) != HOLDER_UNKNOWN
            unchecked = None if here else holder_unchecked(holder)  # another host or pid namespace
            elsewhere = holder is not None and holder.hostname not in (None, socket.gethostname())
            state = ("is still running" if here else
                     "may still be running (on another host, which this host cannot check)" if elsewhere else
                     f"may still be running (in another container: {unchecked} cannot check it)")
            held = f"{holder.describe()}, in {run_file}" if holder else exc
            running = f"shard {shard} in {folder} {state} ({held}), so {file.name} is not its final result"
            if not allow_missing:
                ended = ""
                if not here:  # killed there (preempted), its claim never finished: only its host can tell
                    try:  # a resume is held to the shard's own registration flags
                        flags = _recorded_registration_flags(read_run_file(folder, shard))
                    except (OSError, ValueError):
                        flags = ""
                    where = f"on {holder.hostname}" if elsewhere else "in its container on this host"
                    ended = (f"; if it has ended, resume it {where} ({resume_command(folder, shard)}"
                             f"{flags}), which finishes its claim, or {release_advice(run_file)}")
                raise UsageError(f"{running}; expected every shard merged to have ended: merge once it has{ended}, "
                                 "or pass --allow-missing to merge without it") from None
            print(f"Leaving out {file}: {running} (--allow-missing: its episodes are missing from the merge)")
            continue
        kept.append((file, results))
    if not kept:
        raise UsageError(f"every shard given is still running ({', '.join(map(str, files))}); expected at least one "
                         "that has ended: merge once they have")
    return kept


def _refuse_live_runs_beside(output: Path) -> None:
    """Refuse, --overwrite or not, a merge --output in a folder where a run other than a shard is still running: an
    open-loop, batch, record or whole rollout there would write its own results.json or eval_info.json over the
    merge's (or the merge over its). Live shards may share the folder: they write results_shard*.json only."""
    from .run_claim import refuse_live_claims
    from .output_files import shard_files

    folder = output.parent
    if folder.is_dir():
        refuse_live_claims(folder, flag="--output", skip=[name for name in shard_files(folder) if name.startswith("run_")])


def _merge_target(output: Path) -> Path:
    """Where the merge is written: `output`, or the file a symbolic link `output` points to (written through, never
    replacing the link); UsageError for a dangling link (an unmounted share), as rollout and record refuse one, or a
    path under a file."""
    import os

    from gr00t_client.cli_flags import broken_link_problem

    from .cli_errors import UsageError
    from .output_files import OutputDirError, aside_name, not_a_directory_above, refuse_path_too_long

    problem = broken_link_problem("--output", output)
    if problem is not None:
        raise UsageError(problem)
    blocker = not_a_directory_above(output)
    if blocker is not None:  # mkdir said "[Errno 17] File exists" of the --output itself
        raise UsageError(f"--output {output}: {blocker} exists and is not a directory; expected a folder there, or "
                         "name another --output")
    target = Path(os.path.realpath(output)) if output.is_symlink() else output
    try:  # the merge and its eval_info.json are written aside first, under longer names: 'File name too long' of
        refuse_path_too_long(target.parent, "--output's folder",  # a file that fits, after every check had passed
                             longest=aside_name(max(target.name, "eval_info.json", key=len)))
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None
    return target


def _check_eval_info_apart(output: Path) -> None:
    """Refuse an --output that is (or resolves to) the eval_info.json the merge writes beside it: the second write
    replaced the merged results, and the merge said it had written them."""
    from .cli_errors import UsageError
    from .eval_info import EVAL_INFO_FILENAME

    eval_info = output.parent / EVAL_INFO_FILENAME
    if output.name == EVAL_INFO_FILENAME or output.resolve() == eval_info.resolve():
        raise UsageError(f"--output {output} is the {EVAL_INFO_FILENAME} the merge writes beside its results file "
                         f"({eval_info}, LeRobot's summary), which would replace the merged results; expected another "
                         f"file name: name --output {output.parent / 'results.json'}, say")


def _never_replaced(output: Path) -> Optional[str]:
    """What an existing --output is when no merge may replace it, --overwrite or not: a run's own file (its episode
    log, run or claim file, a shard's, run's or batch's results), or no rollout results file (the kind merge writes);
    None for an earlier merge's output or a rollout results file no run keeps beside it."""
    from .cli_errors import UsageError
    from .output_files import EPISODE_LOG_FILENAME, SHARD_FILE_NAME
    from .run_claim import CLAIM_FILENAMES, claim_files

    shard_file = SHARD_FILE_NAME.fullmatch(output.name)
    kind = shard_file.group(1) if shard_file else None
    if output.name == EPISODE_LOG_FILENAME or kind == "episodes":
        return "a run's episode log (the episodes its --resume and a merge read)"
    if output.name in CLAIM_FILENAMES or kind == "run":
        return "a run's run or claim file (its settings and claim, which its --resume needs)"
    if kind == "results":
        return "a shard's own results file (what a merge of its split reads)"
    if output.name == "batch_results.json":
        return "a batch's results file (what its --resume reads)"
    try:
        results = _read_results_file(output)
    except UsageError:
        return "not a results file (not readable as JSON)"
    if "merged_from" in results:
        return None
    if results.get("kind") != "rollout":
        return f"not a rollout results file, the kind merge writes (its kind is {results.get('kind')!r})"
    beside = [name for name in claim_files(output.parent) if (output.parent / name).exists()]
    if beside:
        return f"a run's own results file ({output.parent / beside[0]} is beside it)"
    return None


def _check_merge_output(output: Path, overwrite: bool) -> None:
    """Refuse an --output whose writing would destroy a run's own results: an existing file that is a run's own, or
    no results file, --overwrite or not; without --overwrite, one that is not an earlier merge's output, or a file in
    a whole run's --output-dir (the merge's eval_info.json would replace the run's). An earlier merge of another
    evaluation is refused once the merge is made (_check_same_evaluation)."""
    from .cli_errors import UsageError
    from .output_files import RUN_FILENAME

    if output.exists():
        if not output.is_file():
            raise UsageError(f"--output {output} exists and is not a file")
        never = _never_replaced(output)
        if never is not None:
            raise UsageError(f"--output {output} exists and is {never}; merge never replaces such a file, --overwrite "
                             "or not: name another file")
        if not overwrite and "merged_from" not in _read_results_file(output):
            raise UsageError(f"--output {output} exists and is a rollout results file, not the output of an earlier "
                             "merge; name another file, or pass --overwrite to replace it")
    if overwrite:
        return
    if (output.parent / RUN_FILENAME).exists():
        raise UsageError(f"--output {output} is in the --output-dir of a whole run ({output.parent / RUN_FILENAME}), "
                         "whose eval_info.json the merge would replace; name a file elsewhere, or pass --overwrite")
    _check_eval_info_beside(output)


def _check_same_evaluation(output: Path, merged: Dict[str, Any], overwrite: bool) -> None:
    """Refuse, unless `overwrite`, an --output holding an earlier merge of another evaluation (another plan or policy
    than `merged`): only the same merge run again replaces it, as a rollout never mixes a new run with old results."""
    from .cli_errors import UsageError
    from .shard import evaluation_difference

    if overwrite or not output.is_file():
        return
    try:
        earlier = _read_results_file(output)
    except UsageError:  # not a merge: _check_merge_output refused it already
        return
    difference = evaluation_difference(earlier, merged, "the earlier merge")
    if difference is not None:
        raise UsageError(f"--output {output} holds the merge of another evaluation than this one: {difference}; "
                         "expected an earlier merge of the same plan and policy: name another --output, or pass "
                         "--overwrite to replace it")


def _check_eval_info_beside(output: Path) -> None:
    """Refuse an --output beside an eval_info.json that is not this output's pair (its 'merged_results' names another
    file, or none): a second merge into another file of the folder replaced the first's LeRobot-format results. One
    without 'merged_results' (an older gr00t-eval's merge wrote none) is the pair of an --output that is an earlier
    merge's output: the documented merge run again after an upgrade."""
    import json

    from .cli_errors import UsageError
    from .eval_info import EVAL_INFO_FILENAME

    eval_info = output.parent / EVAL_INFO_FILENAME
    if not eval_info.exists():
        return
    try:
        info = json.loads(eval_info.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):  # unreadable
        info = None
    paired = info.get("merged_results") if isinstance(info, dict) else None
    if paired == output.name:
        return
    if isinstance(info, dict) and "merged_results" not in info and output.is_file():
        try:
            if "merged_from" in _read_results_file(output):  # an older version's merge into this same file
                return
        except UsageError:
            pass
    if isinstance(paired, str):
        owner = f"belongs to the merge into {paired}"
    else:
        owner = "is an eval_info.json of unknown origin (a run's, or an older gr00t-eval merge's)"
    raise UsageError(f"--output {output}: {eval_info} beside it {owner}, whose LeRobot-format results the merge would "
                     f"replace; expected a folder without an eval_info.json, or one of an earlier merge into this same "
                     "file: name --output in another folder, or pass --overwrite")


def _made_folders(folder: Path) -> List[Path]:
    """Make `folder` and the folders above it that are missing; those this call made, outermost first (one another
    process made at the same moment is not among them). A folder that cannot be made is a UsageError naming it."""
    from .cli_errors import UsageError

    for _attempt in range(3):
        made = []
        try:
            for path in reversed([folder, *folder.parents]):
                if path.is_dir():
                    continue
                try:
                    path.mkdir()
                except FileExistsError:  # made by another merge just now (a file there: _merge_target refused it)
                    continue
                made.append(path)
            return made
        except FileNotFoundError:  # the folder above was removed meanwhile (another merge's refused output): again
            continue
        except OSError as exc:
            raise UsageError(f"--output's folder {folder} cannot be made: {exc.strerror or exc} ({exc.filename}); "
                             "expected a folder this user can make and write") from None
    raise UsageError(f"--output's folder {folder} cannot be made: a folder above it keeps vanishing as it is made")


def _remove_made_output(folder: Path, made: List[Path]) -> None:
    """Remove the output `folder` of a refused merge where this merge made it and it is still empty. Only that folder,
    which the merge held locked: a folder above it that the merge made may be another merge's locked output by now
    (R54: removing one lost that merge's result), and is left."""
    if folder in made:
        try:
            folder.rmdir()
        except OSError:  # something was put there since, or it is gone: it is not the merge's to remove
            pass


def _folder_identity(folder: Path) -> Optional[Tuple[int, int]]:
    """run_stop.folder_identity of `folder`; None when it is gone."""
    from .run_stop import folder_identity

    try:
        return folder_identity(folder)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _merge_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock of the output's `folder` (run_claim.locked_file; a directory, as keygen locks its
    folder: no file is left), made first where missing, from the merge's checks through its writes, so that two merges
    into one folder at once act as one after the other, whether or not it was there before. Only that folder is
    locked, never one above it (/tmp, a home folder), so merges into two new folders there do not wait on each other.
    A refused merge removes the output folder it made, if still empty (_remove_made_output)."""
    from .run_claim import locked_file

    while True:
        made = _made_folders(folder)
        before = _folder_identity(folder)
        if before is None:  # removed just now by a refused merge that made it: make it again
            continue
        with locked_file(folder):
            if _folder_identity(folder) != before:  # removed, while this one waited, by a refused merge that made it
                continue
            try:
                yield
            except BaseException:
                _remove_made_output(folder, made)
                raise
            return


def _check_and_write(args: argparse.Namespace, output: Path) -> Tuple[Dict[str, Any], Path]:
    """Check --output and the shard files, merge them and write the merge with its eval_info.json; the merge and the
    path it was written to."""
    from .cli_errors import UsageError
    from .eval_info import EVAL_INFO_FILENAME, lerobot_eval_info
    from .results import write_results_together
    from .run_stop import is_storage_error, storage_advice
    from .shard import MergeError, merge_results

    _check_eval_info_apart(output)
    inputs = _running_shards_left_out(_results_files(args.results, output), args.allow_missing)
    files = [file for file, _ in inputs]
    _refuse_live_runs_beside(output)
    _check_merge_output(output, args.overwrite)
    try:
        merged = merge_results([results for _, results in inputs], allow_missing=args.allow_missing,
                               names=[str(f) for f in files])
    except MergeError as exc:
        raise UsageError(f"{exc}{_unfinished_shards_hint(args.results) if 'in no results file' in str(exc) else ''}") from None
    _check_same_evaluation(output, merged, args.overwrite)
    merged["merged_files"] = [str(f) for f in files]
    # where each is, whatever the folder the merge ran in: a shard run again finds the merges of its own file by it
    merged["merged_paths"] = [os.path.abspath(f) for f in files]
    merged["merged_into"] = os.path.abspath(output.parent)  # beside its shards, it moves (or is copied) with them
    eval_info = {**lerobot_eval_info(merged), "merged_results": output.name}  # the results file it pairs with
    written = [(output, merged), (output.parent / EVAL_INFO_FILENAME, eval_info)]
    try:  # both or neither: a full disk never leaves a new merge beside an earlier merge's eval_info.json
        path = write_results_together(written)[0]
    except OSError as exc:
        if not is_storage_error(exc):
            raise
        raise SystemExit(f"error: {exc.strerror or exc}{f' writing {exc.filename}' if exc.filename else ''}: "
                         f"{output.name} and {EVAL_INFO_FILENAME} were not written (any from an earlier merge are left "
                         f"as they were); the shard results files are unchanged. {storage_advice(exc)}, then run the "
                         "merge again") from None
    except KeyboardInterrupt as exc:  # held until both were renamed: the earlier merge's pair is gone
        if getattr(exc, "renamed", None):
            pair = f"{output} and {output.parent / EVAL_INFO_FILENAME}"
            exc.outcome = f"{pair} hold the new merge"  # type: ignore[attr-defined]
        raise
    return merged, path


def cmd_merge(args: argparse.Namespace) -> int:
    """`gr00t-eval merge`: combine shard results files into one; exit 1 (like the run it stands for) when
    episodes errored (0 then with --allow-errors), are missing (--allow-missing) or a task or shard failed."""
    from .cli_errors import UsageError
    from .results import RESULTS_FILENAME
    from .shard import format_missing

    if not args.output.strip():  # '' wrote into the current folder, ' ' a file named by one space
        raise UsageError(f"--output must name a results file or a folder, got {args.output!r}")
    output = Path(args.output)
    if output.is_dir() or args.output.endswith("/"):
        output = output / RESULTS_FILENAME
    output = _merge_target(output)
    with _merge_lock(output.parent):  # two merges into one folder at once: the second checks the first's files
        merged, path = _check_and_write(args, output)
    print(format_summary(merged))
    print_errored_episodes(merged)
    n_errors = print_incomplete(merged)
    status = merged.get("status", "complete")
    if status != "complete":
        missing = merged.get("missing_episodes", [])
        shown = format_missing(missing)
        reason, not_run = merged.get("stop_reason") or "", merged.get("n_not_run", len(missing))
        # a merge whose task failed counts them in its reason already ("...; 5 episodes did not run"): not said twice
        said = not shown and re.search(rf"(^|\D){not_run} episodes did not run", reason)
        print(f"{status.upper()}: {reason}{'' if said else f'; {not_run} episodes did not run'}"
              f"{': ' + shown if shown else ''} (run the missing shards, or resume them, and merge again)"
              f"{_unfinished_shards_hint(args.results)}")
    print(f"Merged {len(merged['merged_files'])} files into {path}")
    if status != "complete" or merged["failed_tasks"]:
        return 1
    return errors_exit(merged, n_errors, args.allow_errors)
