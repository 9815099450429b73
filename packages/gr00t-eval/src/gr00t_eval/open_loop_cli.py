"""`gr00t-eval open-loop`: check the flags, claim the output directory (OPEN_LOOP_RUN_FILENAME), run
open_loop.evaluate_open_loop against the server and print the plots, results and exit status."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

from .cli_errors import UsageError

DEFAULT_OPEN_LOOP_BASE = "/tmp/open_loop_eval"
OPEN_LOOP_RUN_FILENAME = "open_loop_run.json"  # an open-loop run's settings; creating it claims the output directory


def _connect(args: argparse.Namespace):
    from . import connection

    return connection.open_client(args.host, args.port, args)


def _split_host_port(args: argparse.Namespace) -> None:
    """--host HOST:PORT taken as rollout's --policy-client-host takes it (ray_runner.parse_servers): args.host and
    args.port become the one server's; a port named both there and, differently, with --port is refused."""
    from .ray_runner import parse_servers

    try:
        servers = parse_servers(args.host, args.port, host_flag="--host", port_flag="--port")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if len(servers) != 1:
        raise UsageError(f"--host names one policy server (HOST or HOST:PORT), got {args.host!r}")
    [server] = servers
    if server.port != args.port and "port" in getattr(args, "given_flags", ()):
        raise UsageError(f"--host {args.host!r} names port {server.port} and --port is {args.port}; give the port "
                         "once, in --host or with --port")
    args.host, args.port = server.host, server.port


def _plots_wanted(args: argparse.Namespace) -> bool:
    """Plots unless --no-plots; without matplotlib (a plain `pip install gr00t-eval`) open-loop runs without the
    default plots, while a --save-plot-path it cannot honour is refused."""
    from .extras import is_installed

    if args.no_plots:
        if args.save_plot_path is not None:
            raise UsageError(f"--no-plots and --save-plot-path {args.save_plot_path} conflict: give one")
        return False
    if not is_installed("matplotlib"):
        if args.save_plot_path is not None:
            raise UsageError(f"--save-plot-path {args.save_plot_path} needs matplotlib, which is not installed: "
                             "pip install 'gr00t-eval[plots]' (or drop --save-plot-path to run without plots)")
        print("note: matplotlib is not installed, skipping plots (pip install 'gr00t-eval[plots]')", file=sys.stderr)
        return False
    return True


def _check_horizon_flags(given: List[Tuple[str, int]]) -> None:
    """Warn of the deprecated --action-horizon; refuse it beside --execution-horizon with another value (the one
    given last won). A flag given twice keeps argparse's rule: its last value."""
    last = {flag.lstrip("-").replace("_", "-"): (flag, value) for flag, value in given}
    if "action-horizon" in last:
        logging.getLogger(__name__).warning("--action-horizon is deprecated; use --execution-horizon")
    if len(last) == 2 and len({value for _, value in last.values()}) == 2:
        shown = ", ".join(f"{flag} {value}" for flag, value in last.values())
        raise UsageError(f"the execution horizon is given twice with different values ({shown}); give one")


def cmd_open_loop(args: argparse.Namespace) -> int:
    """`gr00t-eval open-loop`: plots, results.json and the reference's console lines; 1 if nothing was evaluated, an
    (empty) trajectory was skipped, the run aborted (a server gone) or a trajectory errored (0 then with
    --allow-errors)."""
    from tqdm.auto import tqdm

    from . import connection
    from .dataset import LeRobotDataset
    from .open_loop import (RESULTS_FILENAME, OpenLoopConfig, check_open_loop_policy, check_traj_ids_in_dataset,
                            evaluate_open_loop)
    from .output_files import OutputDirError
    from .run_stop import WRITE_REFUSED_ERRNOS, is_storage_line, sigterm_as_interrupt

    _check_horizon_flags(getattr(args, "horizon_flags", None) or [])
    _split_host_port(args)
    if not (Path(args.dataset_path) / "meta").is_dir():
        raise UsageError(f"--dataset-path {args.dataset_path}: not a LeRobot dataset (no meta/ directory there)")
    modality_keys = args.modality_keys
    if modality_keys is not None:  # the dataset is local: a key it lacks is refused here, not after connecting
        from .open_loop_checks import dataset_action_keys

        dataset_keys = LeRobotDataset(args.dataset_path).action_keys
        try:
            modality_keys = dataset_action_keys(modality_keys, dataset_keys)
        except ValueError as exc:
            raise UsageError(f"--modality-keys: {exc}") from None
    plot = _plots_wanted(args)
    if plot and args.save_plot_path is not None:
        from .plots import check_plot_folder_free, check_plot_path

        try:
            check_plot_path(args.save_plot_path, "--save-plot-path", args.traj_ids)
            check_plot_folder_free(args.save_plot_path, args.output_dir, "--save-plot-path", args.traj_ids)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:  # mistakes in the flags fail before any connection is made or directory created
        config = OpenLoopConfig(
            dataset_path=args.dataset_path, traj_ids=args.traj_ids, steps=args.steps, execution_horizon=args.execution_horizon,
            modality_keys=modality_keys, output_dir=args.output_dir or DEFAULT_OPEN_LOOP_BASE,
            embodiment_tag=args.embodiment_tag,  # as typed: matched against the served tag (evaluated_embodiment)
            observation_format=args.observation_format, plot=plot,
            plot_path=args.save_plot_path, denoising_steps=args.denoising_steps,
        )
    except ValueError as exc:
        raise UsageError(f"{exc} (check --steps, --execution-horizon, --traj-ids, --modality-keys, --denoising-steps)") from None
    try:  # ids past its end (a truncated copy, another split) would leave a partial run
        check_traj_ids_in_dataset(config.traj_ids, LeRobotDataset(args.dataset_path).num_episodes, args.dataset_path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    connection.portable_keys(args)  # a key mistake (a flag or $GR00T_* variable) fails before the folder is claimed
    if args.output_dir:  # a live run's folder, or a non-empty one without --overwrite: refused before connecting
        _refuse_open_loop_output_dir(args)
    else:  # the shared default's folders another user made: refused before connecting too
        _refuse_unwritable_default_dir(args)
    output_dir, claiming = None, False
    try:
        with sigterm_as_interrupt(), _connect(args) as client:
            # The policy's settings (horizon, embodiment, its keys in the dataset) before --overwrite empties the
            # folder: a run refused here leaves the earlier run's results.json and plots where they are.
            checked = check_open_loop_policy(client, config, report=tqdm.write)
            claiming = True  # its own errors are said as a claim's (cli.main), not as a stopped run's
            output_dir = _claim_open_loop_output_dir(args, config)
            claiming = False
            config = dataclasses.replace(config, output_dir=str(output_dir))
            print(f"Output directory: {output_dir}")
            with _claim_held_until_the_end(output_dir / OPEN_LOOP_RUN_FILENAME):
                result = evaluate_open_loop(client, config, report=tqdm.write, claim=OPEN_LOOP_RUN_FILENAME,
                                            checked=checked, keep_arrays=False)  # results.json needs no arrays
    except (KeyboardInterrupt, Exception, SystemExit) as exc:
        if output_dir is not None:
            _release_unused_claim(output_dir)
        if claiming:
            raise
        # what this run wrote on its way out; an OutputDirError says results.json is another writer's
        kept = (_kept_open_loop_results(output_dir / RESULTS_FILENAME)
                if output_dir is not None and isinstance(exc, (KeyboardInterrupt, Exception))
                and not isinstance(exc, OutputDirError) else None)
        written = _written_folders(args, output_dir)
        storage = isinstance(exc, OSError) and ((output_dir is not None and is_storage_line(exc, *written))
                                                or (exc.errno in WRITE_REFUSED_ERRNOS and exc.filename))
        if kept is not None and (storage or kept["status"] != "aborted"):  # the stop's own line follows (exit 2, 130)
            _name_kept_open_loop_results(output_dir / RESULTS_FILENAME, kept)
        if storage:
            raise SystemExit(_storage_stop_message(exc, output_dir, written)) from None
        if kept is None or kept["status"] != "aborted":
            raise
        return _report_aborted_run(output_dir / RESULTS_FILENAME, kept)  # a server gone: exit 1, as rollout's
    if result.trajectories:
        print(f"Plots: {', '.join(str(t.plot_path) for t in result.trajectories.values() if t.plot_path) or '(none)'}")
        unplotted = [str(t) for t, r in result.trajectories.items() if r.plot_error]
        if unplotted:
            print(f"Plots not written for trajectories {', '.join(unplotted)} (why: plot_error in results.json)")
    n_errors = len(result.errored)
    if n_errors:
        over = (f"the averages above are over the {len(result.trajectories)} that were evaluated" if result.trajectories
                else "nothing was scored")
        print(f"INCOMPLETE: {n_errors} of {n_errors + len(result.trajectories)} trajectories errored; {over}")
    if result.skipped:
        print(f"INCOMPLETE: {len(result.skipped)} of {len(config.traj_ids)} requested trajectories skipped "
              f"({', '.join(map(str, result.skipped))}: empty episodes; skip_reasons in {RESULTS_FILENAME})")
    print(f"Results: {result.results_path}")
    if not result.trajectories or result.skipped:  # a trajectory asked for and not scored: not a complete run
        return 1
    if n_errors and not args.allow_errors:
        print("exit status 1 because trajectories errored (pass --allow-errors to exit 0 anyway)")
        return 1
    return 0


def _written_folders(args: argparse.Namespace, output_dir: Optional[Path]) -> Tuple[Any, ...]:
    """Where an open-loop run writes: its output folder and, with --save-plot-path, the plot folder it names or its
    plot files (and their temporaries), not the folder around them: with `--save-plot-path plot.png` that was the
    working folder, and a dataset file there this user may not read was reported as a folder it may not write."""
    from .plots import is_plot_folder, trajectory_plot_file
    from .run_claim import partial_path

    path = args.save_plot_path
    if path is None:
        return (output_dir,)
    if is_plot_folder(path):
        return output_dir, Path(path)
    traj_ids = getattr(args, "traj_ids", None) or [0]  # the flag's default
    plots = [trajectory_plot_file(path, traj_id, len(traj_ids)) for traj_id in traj_ids]
    return (output_dir, *plots, *(partial_path(plot) for plot in plots))


def _storage_stop_message(exc: OSError, output_dir: Optional[Path], written: Tuple[Any, ...] = ()) -> str:
    """The one line for an open-loop run stopped by a storage error (run_stop.is_storage_line): its output folder
    gone, or a full disk or read-only folder; or by a permission error outside its output folder: a file it reads (the
    dataset's); what is kept, and what to do (open-loop runs do not resume). `output_dir` None: stopped before it
    was claimed (while the policy's settings were checked). `written`: the folders it writes into (_written_folders)."""
    from .open_loop import RESULTS_FILENAME
    from .run_stop import OutputFolderGone, is_storage_line, storage_advice, storage_error_text

    if isinstance(exc, OutputFolderGone):
        return (f"error: the output folder {output_dir} disappeared (unmounted or deleted) while the run wrote to it: "
                "the run stopped, and wrote nothing more; run it again into a folder that is there (open-loop runs "
                "do not resume)")
    results = None if output_dir is None else output_dir / RESULTS_FILENAME
    kept = (f"{results} holds what was scored before it" if results is not None and results.is_file()
            else f"no {RESULTS_FILENAME} was written")
    if output_dir is None or not is_storage_line(exc, *(written or (output_dir,))):  # not its output: a file it reads
        return (f"error: cannot read {exc.filename}: {exc.strerror or exc}: the run stopped; {kept}. Give this user "
                "read access to it, then run the same command again with --overwrite (open-loop runs do not resume)")
    return (f"error: {storage_error_text(exc)}: the run stopped; {kept}. {storage_advice(exc)}, then run the same "
            "command again with --overwrite (open-loop runs do not resume)")


def _release_unused_claim(output_dir: Path) -> None:
    """A run that ended before writing anything (no server answered, say) leaves no claim behind: the same
    command, run again once the server is up, is not refused as 'not empty'."""
    from .run_claim import claim_alive_name, release_alive_lock

    claim = output_dir / OPEN_LOOP_RUN_FILENAME
    try:
        if {entry.name for entry in output_dir.iterdir()} <= {claim.name, claim_alive_name(claim.name)}:
            release_alive_lock(claim, remove=True)
            claim.unlink()
    except OSError:
        pass


def _kept_open_loop_results(path: Path) -> Optional[dict]:
    """After a stopped open-loop run: what its results.json kept (written on the way out); None when there is none,
    or it is not an open-loop results file."""
    try:
        kept = json.loads(path.read_text())
        kept["aggregated"]["n_trajectories"], kept["not_run_trajectories"], kept["status"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return kept


def _name_kept_open_loop_results(path: Path, kept: dict) -> None:
    """After a run stopped by Ctrl-C or the disk: say on stderr what its results.json (`kept`) holds."""
    scored, not_run = kept["aggregated"]["n_trajectories"], kept["not_run_trajectories"]
    print(f"{str(kept['status']).upper()}: {path} holds the {scored} trajectories scored before the stop; not run: "
          f"{not_run}", file=sys.stderr)


def _report_aborted_run(path: Path, kept: dict) -> int:
    """After a run aborted by a failure (a server gone): rollout's ABORTED and Results lines on stdout; exit 1."""
    scored, not_run = kept["aggregated"]["n_trajectories"], kept["not_run_trajectories"]
    print(f"ABORTED: {kept.get('stop_reason')}; {len(not_run)} trajectories did not run: {not_run}; {path} holds the "
          f"{scored} trajectories scored before the stop (open-loop runs do not resume: run the same command again "
          "with --overwrite)")
    print(f"Results: {path}")
    return 1


def _claim_open_loop_output_dir(args: argparse.Namespace, config: Any) -> Path:
    """Check, make and claim (OPEN_LOOP_RUN_FILENAME, run_claim) the output directory before anything else runs.

    Open-loop writes its results only at the end, so without the claim two runs started into one empty
    directory would both pass the emptiness check and mix their files. Without --output-dir the run gets a
    new dated directory, created atomically (never one another run took). A directory whose claim is held by
    a run still running is refused even with --overwrite; the claim of a finished run, or of one whose
    process is gone (killed), is emptied with the rest by --overwrite.
    """
    from .open_loop import claim_open_loop_output_dir
    from .output_files import OutputDirError
    from .run_dir import make_fresh_dated_output_dir, prepare_output_dir

    def claim(output_dir: Path) -> None:
        claim_open_loop_output_dir(output_dir, config, host=args.host, port=args.port)

    if not args.output_dir:
        label = _default_dir_label(args)
        for _ in range(100):
            try:
                output_dir = make_fresh_dated_output_dir(DEFAULT_OPEN_LOOP_BASE, label)
            except OutputDirError as exc:
                raise UsageError(str(exc)) from None
            try:
                claim(output_dir)
                return output_dir
            except OutputDirError:  # a run given this new directory as its --output-dir claimed it first
                continue
        raise UsageError(f"no free output directory under {DEFAULT_OPEN_LOOP_BASE}; pass --output-dir")
    output_dir = Path(args.output_dir)
    _refuse_open_loop_output_dir(args)  # again: another run may have claimed or filled it since the first check
    try:
        prepare_output_dir(output_dir, overwrite=args.overwrite)
        claim(output_dir)
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None
    return output_dir


def _default_dir_label(args: argparse.Namespace) -> str:
    """The name a run without --output-dir gives its dated folder: the dataset folder's."""
    return Path(args.dataset_path).resolve().name or "dataset"


def _refuse_unwritable_default_dir(args: argparse.Namespace) -> None:
    """UsageError when this user cannot make the default dated folder (run_dir.refuse_unwritable_default_dir)."""
    from .output_files import OutputDirError
    from .run_dir import refuse_unwritable_default_dir

    try:
        refuse_unwritable_default_dir(DEFAULT_OPEN_LOOP_BASE, _default_dir_label(args))
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None


def _refuse_open_loop_output_dir(args: argparse.Namespace) -> None:
    """UsageError for an --output-dir that is (or holds, or is inside) the dataset, that a run still running has
    claimed or is inside, or that is not empty without --overwrite; creates and deletes nothing."""
    from .run_claim import dead_partial_files, is_alive_file, refuse_live_claims, refuse_live_runs_around
    from .output_files import OutputDirError
    from .run_dir import check_output_dir, refuse_what_overwrite_keeps
    from .trash import OVERWRITE_TRASH

    output_dir = Path(args.output_dir)
    dataset, target = Path(args.dataset_path).resolve(), output_dir.resolve()
    if dataset == target or target in dataset.parents or dataset in target.parents:  # --overwrite would delete it
        relation = ("the dataset" if dataset == target else "a folder holding the dataset" if target in dataset.parents
                    else "a folder inside the dataset")
        raise UsageError(f"--output-dir {output_dir} is {relation} --dataset-path {args.dataset_path}; name another "
                         "directory for the results")
    try:
        refuse_live_claims(output_dir)  # any command's, before "not empty": --overwrite must not be suggested
        refuse_live_runs_around(output_dir)  # nor inside the folder of a run still running
        # A dead process's half-written file (its claim, killed mid-write) is not content: prepare_output_dir deletes it.
        leftovers = set(dead_partial_files(output_dir))
        earlier = [entry for entry in output_dir.iterdir() if entry not in leftovers and entry.name != OVERWRITE_TRASH
                   and not is_alive_file(entry.name)] if output_dir.is_dir() else []
        if earlier and not args.overwrite:
            refuse_what_overwrite_keeps(output_dir)  # not "pass --overwrite" where it would be refused: a circle
            raise UsageError(f"--output-dir {output_dir} is not empty; pass --overwrite to empty it or name a new directory "
                             "(open-loop runs do not resume: run them again)")
        # what --overwrite must not empty (a live run inside); a path too long for its plots and results
        check_output_dir(output_dir, overwrite=args.overwrite, videos_below="")
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None


@contextlib.contextmanager
def _claim_held_until_the_end(claim: Path) -> Iterator[None]:
    """Mark the claim finished however the run ends (its results written, interrupted, failed), so a later
    --overwrite may reuse the directory; a run killed before this (kill -9) leaves a claim of a gone process."""
    from .run_claim import finish_claim, finished_however_it_ends

    with finished_however_it_ends(lambda outcome: finish_claim(claim, outcome)):
        yield
