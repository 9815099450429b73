"""`gr00t-eval`: open-loop evaluation, closed-loop rollout and Meta-World expert recording.

Every flag is accepted in kebab (`--n-episodes`) and snake (`--n_episodes`) spelling, like the reference's tyro CLI.
Here: the parser, main() with its interrupt handling, the dispatch and the rollout command; the open-loop and record
commands are in open_loop_cli and record_cli, the scaling commands in scale_cli.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import Any, Dict, Optional, Sequence, Set

# Only light modules here: main() makes SIGTERM and SIGHUP stop a command before the heavy imports (numpy, ZeroMQ: the
# first half second), which a stop during them otherwise ended with a traceback or silently (143, 129).
from gr00t_client.cli_flags import (CommandParser, add_log_level, port_number, refuse_gone_working_folder,
                                    subcommand_parsers)
from gr00t_client.cli_flags import flag as _flag
from gr00t_client.cli_signals import ProgramStopSignals, interrupted_line

from .cli_errors import USAGE_EXIT_CODE, UsageError, _unknown_tag, path_flag
from .extras import MissingExtraError, require
from .open_loop_cli import DEFAULT_OPEN_LOOP_BASE, OPEN_LOOP_RUN_FILENAME, cmd_open_loop
from .record_cli import cmd_record
from .rollout.config import DEFAULT_ENV_TIMEOUT_S, NON_FINITE_KWARG, non_finite_part, simulator_extras

DEFAULT_ROLLOUT_DIR = "/tmp/gr00t_rollout_eval"


def _parse_kwarg(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return key, value
    found = non_finite_part(parsed, key)
    if found is not None:  # json reads NaN, Infinity and -Infinity as numbers
        hint = f"; to pass the text, quote it: {key}='\"{value}\"'" if found == key else ""
        raise argparse.ArgumentTypeError(f"{text}: {found} is not a finite number; {NON_FINITE_KWARG}{hint}")
    return key, parsed


def _parse_pair(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def add_env_import_flag(p: argparse.ArgumentParser) -> None:
    """--env-import MODULE (repeatable), read by import_env_modules: rollout's, and `suites`' to list a module's suites."""
    p.add_argument(*_flag("env-import"), action="append", default=[], metavar="MODULE",
                   help="import MODULE first (e.g. one that registers gym envs in the flat GR00T format, or task suites "
                        "with gr00t_eval.suites.register_suite); repeatable")


def import_env_modules(modules: Sequence[str]) -> None:
    """Import each --env-import module (which registers envs, prefixes or suites as it is imported)."""
    import importlib

    from .rollout.config import exit_call

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"--env-import {module}: cannot import it ({exc}); is it installed, or on PYTHONPATH?") from None
        except SystemExit as exc:
            raise UsageError(f"--env-import {module}: importing it called {exit_call(exc)}; a module to import must "
                             "register envs, not exit") from None


def apply_env_registrations(args: argparse.Namespace) -> None:
    """Apply --env-import, --env-prefix and --env-adapter (in that order)."""
    from .rollout import ENV_PREFIX_TO_EMBODIMENT_TAG, register_env_prefix
    from .rollout.envs import _resolve_adapter

    import_env_modules(args.env_import)
    tags = dict(args.env_prefix)
    for prefix, tag in tags.items():
        try:
            register_env_prefix(prefix, tag)
        except ValueError as exc:
            raise _unknown_tag(f"--env-prefix {prefix}={tag}", exc) from None
    for prefix, adapter in args.env_adapter:
        if ":" not in adapter:
            raise SystemExit(f"error: --env-adapter {prefix}={adapter}: expected MODULE:FUNCTION")
        try:  # found now, before any folder is made or server asked, rather than as every task's failure
            _resolve_adapter(adapter)
        except (ImportError, ValueError) as exc:
            raise UsageError(f"--env-adapter {prefix}={adapter}: {exc}") from None
        register_env_prefix(prefix, tags.get(prefix, ENV_PREFIX_TO_EMBODIMENT_TAG.get(prefix, "new_embodiment")), adapter=adapter)


def _add_connection(p: argparse.ArgumentParser, host_flag: str, port_flag: str, host_default: Optional[str]) -> None:
    p.add_argument(*_flag(host_flag), dest="host", default=host_default,
                   help=f"policy server host, or HOST:PORT (or tcp://HOST:PORT, as the server prints it; default "
                        f"{host_default})")
    p.add_argument(*_flag(port_flag), dest="port", type=port_number(f"--{port_flag}"), default=5555,
                   help="policy server port, in the digits 0-9 (default 5555)")
    from . import connection

    p.add_argument(*_flag("api-token"), default=os.environ.get("GR00T_API_TOKEN"), help="server API token (default $GR00T_API_TOKEN)")
    connection.add_security_arguments(p, _flag)
    p.add_argument(*_flag("timeout-ms"), type=int, default=15000,
                   help="per-request timeout in ms (default 15000); a rollout's liveness ping gets a quarter of it, at "
                        "least 2 s: raise it for a far link")
    p.set_defaults(port_flag=f"--{port_flag}")  # how a bad port is named (the flag differs between commands)


def _check_connection_args(args: argparse.Namespace) -> None:
    """Refuse a port, timeout or API token the client cannot use, before any output directory is made or server asked."""
    from gr00t_client.cli_flags import token_shape
    from gr00t_client.client import MAX_TIMEOUT_MS

    if not 1 <= args.timeout_ms <= MAX_TIMEOUT_MS:
        raise UsageError(f"--timeout-ms must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}, got {args.timeout_ms}")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"{args.port_flag} must be a port number from 1 to 65535, got {args.port}")
    token = args.api_token  # a blank one is refused as empty, when the client options are read
    shape = token_shape(token) if token and token.strip() else None
    if shape is not None:  # the token itself never shown
        raise UsageError(f"--api-token (or $GR00T_API_TOKEN) {shape}: gr00t-server refuses such a token at start-up, "
                         "so no server accepts it ('Invalid API token'); remove it (a token read from a file keeps the "
                         "file's final newline)")


def build_parser() -> argparse.ArgumentParser:
    """The `gr00t-eval` argument parser (sub-commands open-loop, rollout, record, plus the scaling commands)."""
    from gr00t_client.chunking import MERGE_RULES

    from . import __version__

    # Not __doc__: `python -OO` strips it, and every command crashed before parsing
    parser = CommandParser(prog="gr00t-eval", description="`gr00t-eval`: open-loop evaluation, closed-loop rollout "
                           "and Meta-World expert recording.")
    parser.add_argument("--version", action="version", version=f"gr00t-eval {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("open-loop", help="compare a policy's action chunks with a dataset's recorded actions")
    p.add_argument(*_flag("dataset-path"), type=path_flag, required=True,
                   help="LeRobot dataset (v2.x/v3.0 with meta/modality.json)")
    p.add_argument(*_flag("embodiment-tag"), default=None,
                   help="embodiment tag: the server's own (exactly or in any case) or a built-in tag's name or value "
                        "(any case); default: the one the server serves (none recorded for a server that does not say, "
                        "which takes built-in tags only); a tag the server does not serve is refused")
    _add_connection(p, "host", "port", "127.0.0.1")
    p.add_argument(*_flag("traj-ids"), type=int, nargs="+", default=[0],
                   help="episode positions to evaluate (default 0); an id the dataset lacks is refused before "
                        "connecting")
    p.add_argument(*_flag("steps"), type=int, default=200, help="max steps per trajectory (default 200)")
    p.add_argument(*_flag("execution-horizon"), dest="execution_horizon", type=int, default=None, action=_HorizonFlag,
                   help="steps of each chunk used before querying again (default: the policy's action horizon, at "
                        "most 16, or a replay server's own (another is refused); --action-horizon is an alias)")
    p.add_argument(*_flag("action-horizon"), dest="execution_horizon", type=int, default=argparse.SUPPRESS,
                   action=_HorizonFlag, help=argparse.SUPPRESS)
    p.add_argument(*_flag("modality-keys"), nargs="+", default=None, help="action keys to compare and plot, ones both the dataset and the policy have (default: all)")
    p.add_argument(*_flag("output-dir"), type=path_flag, default=None,
                   help=f"plots traj_{{id}}.jpeg, {OPEN_LOOP_RUN_FILENAME} and results.json; must be empty or new "
                        f"(default: a new dated directory {DEFAULT_OPEN_LOOP_BASE}/YYYY-MM-DD/HH-MM-SS_<dataset>; "
                        "where another user's run made those folders, refused before connecting: pass --output-dir). "
                        "Open-loop runs do not resume: run again")
    p.add_argument(*_flag("overwrite"), action="store_true",
                   help="empty a non-empty --output-dir first, once the policy's settings are checked: an earlier run's "
                        "folder, holding its run, claim or results file at its top (a folder without one is refused, "
                        "deleting nothing), and not while a run still running holds it, a folder in it or one above it")
    p.add_argument(*_flag("observation-format"), default="auto", choices=["auto", "nested", "flat"],
                   help="nested {video,state,language} (reference server) or flat video.* keys (sim wrapper); auto asks the server")
    p.add_argument(*_flag("no-plots"), action="store_true", help="skip the JPEG plots (not with --save-plot-path)")
    p.add_argument(*_flag("save-plot-path"), type=path_flag, default=None, metavar="PATH",
                   help="the reference's flag: write the plot of a single trajectory to PATH (a file suffix matplotlib writes: .jpeg, "
                        ".png, .pdf, ...; with several, PATH_traj{id}.SUFFIX), or the plots to a directory PATH as "
                        "traj_{id}.jpeg (default OUTPUT_DIR/traj_{id}.jpeg); needs matplotlib (gr00t-eval[plots]); checked before "
                        "connecting by writing a trial plot in that format; a folder holding another run's results.json "
                        "or live claim, or a plot file this run would write, is refused unless it is --output-dir "
                        "(--overwrite empties only --output-dir)")
    p.add_argument(*_flag("denoising-steps"), type=int, default=None, metavar="N",
                   help="flow-matching denoising steps, sent to the server as options['denoising_steps'] (server default if unset); "
                        "a server that is not a gr00t-server, a replay (serve --dataset-path), or a gr00t-server whose "
                        "get_server_info reports no max_denoising_steps (an older one, which may or may not apply it) is "
                        "not known to apply it: warned, not sent, and recorded under settings_not_applied in "
                        "results.json")
    p.add_argument(*_flag("allow-errors"), action="store_true",
                   help="exit 0 even when trajectories errored (the policy did not follow them; they are reported and left "
                        "out of the averages), unless every trajectory errored: a run that scored nothing exits 1")
    _add_refused_model_path(p)

    p = sub.add_parser("rollout", help="run a policy server in simulation and report the success rate")
    p.add_argument(*_flag("env-name"), default=None, help="e.g. metaworld/reach-v3, pusht/PushT-v0, or a flat-format gym id (required unless --resume)")
    p.add_argument(*_flag("n-episodes"), type=int, default=50,
                   help="episodes per task (each task of a comma-separated --env-name or a suite runs this many; "
                        "default 50; at most 1,000,000 per task)")
    p.add_argument(*_flag("n-envs"), type=int, default=8, help="parallel envs (default 8, at most 64; >1 runs subprocesses; 0 = auto)")
    p.add_argument(*_flag("n-action-steps"), type=int, default=8, help="steps of each chunk executed (default 8)")
    p.add_argument(*_flag("max-episode-steps"), type=int, default=720,
                   help="env steps before an episode is cut (default 720); it replaces a gym id's registered step limit")
    _add_connection(p, "policy-client-host", "policy-client-port", "127.0.0.1")
    for flag in ("host", "port"):  # open-loop's names: argparse's bare "unrecognized arguments" gave no hint
        p.add_argument(*_flag(flag), dest=f"open_loop_{flag}", nargs="?", default=argparse.SUPPRESS,
                       action=_OpenLoopConnectionFlag, help=argparse.SUPPRESS)
    p.add_argument(*_flag("video-dir"), type=path_flag, default=None,
                   help="where episode videos go (default OUTPUT_DIR/videos; a relative path is taken from the working "
                        "directory the run starts in, and saved absolute for --resume); a folder outside the output "
                        "directory may hold other files, but no episode videos of an earlier run (--overwrite deletes "
                        "those only)")
    p.add_argument(*_flag("no-video"), action="store_true", help="record no videos")
    p.add_argument(*_flag("seed"), type=int, default=None,
                   help="episode i uses seed+i (default $GR00T_EVAL_SEED, else a random base seed, drawn once and saved); "
                        "against a replay server each episode uses the seed it was recorded with")
    p.add_argument(*_flag("output-dir"), type=path_flag, default=None,
                   help=f"run.json, episodes.jsonl, results.json, eval_info.json and videos; must be empty or new, "
                        "except that the shards of one --shard I/N split may share one "
                        f"(default: a new dated directory {DEFAULT_ROLLOUT_DIR}/YYYY-MM-DD/HH-MM-SS_<env>)")
    p.add_argument(*_flag("overwrite"), action="store_true",
                   help="empty a non-empty --output-dir first (an earlier run's folder, holding its run, claim or "
                        "results file at its top: a folder without one is refused, deleting nothing), and delete an earlier run's episode videos "
                        "(episode_*_success/failure/error.mp4, nothing else) from a --video-dir outside it. With --shard I/N "
                        "it replaces only that shard's files (its run, episodes and results files and the videos its "
                        "episode log lists in its own videos/ or a --video-dir it claimed), never another shard's, and removes a merge of the split in that folder that "
                        "holds this shard's earlier results once the server answered (one that is a symbolic link is "
                        "kept, with a warning). Refused, --overwrite or not: a directory whose run "
                        "(or this shard) is still running; a whole run into a directory holding shard files; a shard "
                        "into one holding a whole run's run.json or shards of another N (name a new --output-dir)")
    p.add_argument(*_flag("resume"), type=path_flag, default=None, metavar="DIR",
                   help="continue the interrupted rollout in DIR with its saved settings: only the episodes missing "
                        "from DIR/episodes.jsonl (or errored) run; connection flags and --ray-address come from this "
                        "command line (a Ray run may resume without Ray and the other way round)")
    p.add_argument(*_flag("allow-errors"), action="store_true",
                   help="exit 0 even when episodes errored (they are still reported and left out of the metrics), "
                        "unless every episode errored: a run that scored nothing exits 1 (2, keeping no run, when "
                        "every one errored at its reset, before any env was sent a step)")
    p.add_argument(*_flag("max-episodes-rendered"), type=int, default=None, metavar="N",
                   help="write videos of the first N episodes (of each task) only (default: all)")
    p.add_argument(*_flag("env-timeout"), type=float, default=None, metavar="S",
                   help=f"seconds one env construction, reset or step may take before the run stops with the envs "
                        f"named (a hung simulator; writing an episode's video is not counted; default "
                        f"{DEFAULT_ENV_TIMEOUT_S:g}, none for envs in this process; 0 or inf = no limit; at most a "
                        "week). Envs in subprocesses only "
                        "(--n-envs > 1 or 0, however few episodes are left, or --vectorization async): a single env runs in "
                        "this process and is waited for, as are the envs of --vectorization sync, which have no limit "
                        "(any value but 0 is refused with --n-envs 1 under auto vectorization, and with sync). Env workers whose close() has not "
                        "returned that long after the last episode are given up on with a warning. A --resume takes it "
                        "from its own command line, else the saved one")
    p.add_argument(*_flag("transition-host"), *_flag("transition-port"), dest="transition_flag", default=None,
                   help=argparse.SUPPRESS)
    _add_refused_model_path(p)
    p.add_argument(*_flag("env-kwarg"), dest="env_kwargs", type=_parse_kwarg, action="append", default=[],
                   help="KEY=VALUE passed to the env adapter or gym.make (repeatable), e.g. image_size=64")
    add_env_import_flag(p)
    p.add_argument(*_flag("env-prefix"), type=_parse_pair, action="append", default=[], metavar="PREFIX=TAG",
                   help="map env names PREFIX/... to an embodiment tag; repeatable")
    p.add_argument(*_flag("env-adapter"), type=_parse_pair, action="append", default=[], metavar="PREFIX=MODULE:FUNC",
                   help="build env names PREFIX/<task> with FUNC(task, **env_kwargs); repeatable")
    p.add_argument(*_flag("vectorization"), default="auto", choices=["auto", "sync", "async"],
                   help="auto (default): a single env in this process, more in subprocesses; sync: every env in this "
                        "process, one after another (no --env-timeout: a hung env is waited for); async: every env in "
                        "a subprocess of its own")
    p.add_argument(*_flag("client-chunking"), default="off", choices=["off", "sync", "async"],
                   help="off: each policy call runs --n-action-steps env steps (default); sync/async: step the envs one "
                        "step at a time through gr00t_client.ActionChunker, async prefetching the next chunk meanwhile")
    p.add_argument(*_flag("chunk-merge"), default="newest", choices=list(MERGE_RULES),
                   help="with --client-chunking async: how a prefetched chunk merges with the steps still buffered (default newest)")
    p.add_argument(*_flag("rtc-frozen-steps"), type=int, default=None, metavar="K",
                   help="with --client-chunking async: real-time chunking; each prefetch sends the buffered steps and the "
                        "server pins the new chunk's first K steps to them (K = 1 + the policy latency in env steps, at "
                        "most the steps a prefetch overlaps, --n-action-steps // 2 + 1, and the policy's action horizon: a "
                        "larger K is refused before any episode; needs a Gr00tPolicy gr00t-server, or one whose policy's "
                        "work_limits() report 'rtc': True; another server or policy is not known to apply it (an older "
                        "gr00t-server may): warned, and recorded under settings_not_applied in results.json and "
                        "run.json; a replay refuses --client-chunking async, and so this flag, before any episode)")

    rollout_parser = p

    p = sub.add_parser("record", help="record Meta-World's scripted expert as a LeRobot v2.1 dataset")
    p.add_argument(*_flag("env-name"), required=True, help="metaworld/<task>, e.g. metaworld/reach-v3")
    p.add_argument(*_flag("episodes"), *_flag("n-episodes"), dest="episodes", type=int, default=10, help="episodes (default 10)")
    p.add_argument(*_flag("output"), type=path_flag, required=True, help="dataset directory to create")
    p.add_argument(*_flag("seed"), type=int, default=0, help="episode i is recorded with seed+i (default 0; the last seed at most 2**63 - 1)")
    p.add_argument(*_flag("max-episode-steps"), type=int, default=500, help="expert step budget per episode (default 500)")
    p.add_argument(*_flag("image-size"), type=int, default=64, help="camera resolution, square, even, up to 1024 (default 64)")
    p.add_argument(*_flag("camera"), default=None, help="Meta-World camera name (default corner2)")
    p.add_argument(*_flag("overwrite"), action="store_true",
                   help="replace an existing dataset directory: meta/, data/, videos/, and LeRobot's images/ and the "
                        "Hub's README.md beside meta/info.json (.git/ and .gitattributes stay); a folder holding "
                        "anything else is refused, deleting nothing")

    # suites, --shard, --ray-address, batch and merge (gr00t_eval.scale_cli)
    from . import scale_cli

    scale_cli.add_scale_arguments(rollout_parser)
    scale_cli.register_scale_commands(sub)
    add_log_level(parser, "logging level, any case (default INFO); DEBUG also prints tracebacks of errors")
    return parser


def given_flags(argv: Sequence[str]) -> Set[str]:
    """The argument dests that `argv` itself sets (not left at their defaults): parsed again with no defaults."""
    parser = build_parser()
    for each in [parser, *subcommand_parsers(parser).values()]:
        for action in each._actions:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(list(argv))))


class _HorizonFlag(argparse.Action):
    """open-loop's --execution-horizon and its deprecated alias --action-horizon: stored as execution_horizon, each
    spelling given noted in `horizon_flags` (as (flag, value)) so that the alias is warned of and a disagreement
    between the two refused, in whichever form argparse took them (--action-horizon=8 too)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)
        given = getattr(namespace, "horizon_flags", None) or []
        setattr(namespace, "horizon_flags", [*given, (str(option_string), values)])


class _OpenLoopConnectionFlag(argparse.Action):
    """rollout's --host/--port: open-loop's names for --policy-client-host/--policy-client-port; refused naming those."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        name = str(option_string).lstrip("-").replace("_", "-")
        parser.error(f"{option_string} is open-loop's flag; rollout's is --policy-client-{name}")


def _add_refused_model_path(p: argparse.ArgumentParser) -> None:
    p.add_argument(*_flag("model-path"), dest="model_path_flag", default=None, help=argparse.SUPPRESS)


def _refuse_reference_flags(args: argparse.Namespace) -> None:
    """Reference flags with no meaning here: one line saying what to do instead."""
    if getattr(args, "model_path_flag", None):
        raise UsageError("gr00t-eval does not load models: start `gr00t-server serve --model-path "
                         f"{args.model_path_flag} ...` and pass its --host/--port here")
    if getattr(args, "transition_flag", None):
        raise UsageError("--transition-host/--transition-port (the reference's transition server) are not supported: "
                         "run the policy with `gr00t-server serve` and pass --policy-client-host/--policy-client-port")


def cmd_rollout(args: argparse.Namespace) -> int:
    """`gr00t-eval rollout`: run.json, episodes.jsonl, results.json, eval_info.json, videos and the reference's lines.

    The run file records this process until the run ends (run_file.held_run_claims), so neither --overwrite nor a
    second --resume takes the directory (or shard) of a run that is still running.
    """
    from . import scale_cli
    from .output_files import OutputDirError
    from .run_file import claim_resumed_run, held_run_claims
    from .run_stop import INTERRUPTED_EXIT_CODE
    from .shard import ShardSpec

    if args.env_name:  # named before the rollout modules, whose own check cannot tell PushT from Meta-World
        require("gymnasium", simulator_extras(args.env_name), "closed-loop rollout")
    apply_env_registrations(args)
    with held_run_claims() as ending:
        if args.resume:
            try:
                shard = ShardSpec.parse(args.shard) if args.shard else None
            except ValueError:  # reported by the rollout's own check
                shard = None
            try:
                claim_resumed_run(args.resume, shard)
            except OutputDirError as exc:
                raise UsageError(str(exc)) from None
        code = scale_cli.run_rollout_command(args)
        if code == INTERRUPTED_EXIT_CODE:  # the rollout caught its Ctrl-C to save what ran: the claim says so too
            ending.outcome = "interrupted"
        return code


INTERRUPTED_EXIT_CODE = 130  # run_stop's, not imported from there: a stop may come while it is being imported


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit code (2 and one line on stderr for a mistake, 130 when interrupted).

    SIGTERM and SIGHUP stop any command as Ctrl-C does, from main's first line (they killed it with 143/129). As the
    program (argv None) it ignores the stop signals once the command has returned: the results are saved and reported,
    and a late signal in the interpreter's exit (seconds, with torch or mujoco loaded) ended a finished command with
    130/143/129 and no word.
    """
    if refuse_gone_working_folder("gr00t-eval", argv):
        return USAGE_EXIT_CODE
    stop_signals = ProgramStopSignals()
    try:
        return _main(argv)
    finally:
        stop_signals.finish(ignore_from_now_on=argv is None)


def _main(argv: Optional[Sequence[str]]) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command, args = _command_named(words), None
    try:
        from gr00t_client.stdout_guard import guard_stdout

        from .progress import BarAwareHandler
        from .output_files import OutputDirError

        args = build_parser().parse_args(argv)
        command = args.command
        guard_stdout()  # `rollout | head` must not fail a run after its results were saved
        if args.command in ("rollout", "open-loop"):  # the flags given: a resume refuses changes, a host:port
            args.given_flags = given_flags(words)  # another explicit port
        logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s:%(name)s:%(message)s",
                            handlers=[BarAwareHandler(sys.stderr)])
        return _run_command(args)
    except KeyboardInterrupt as exc:
        print(interrupted_line("gr00t-eval", command, exc), file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except SystemExit as exc:  # `raise SystemExit("error: ...")` in a command: the same one line and exit 2
        if args is None:  # argparse's own: --help, --version, a usage error
            raise
        message = _exit_message(exc)
        print(f"gr00t-eval {args.command}: error: {message}", file=sys.stderr)
        return USAGE_EXIT_CODE
    except Exception as exc:  # noqa: BLE001 - one line for the user; the traceback after it only at DEBUG
        if args is None:
            raise
        message = (str(exc).strip("\"'") if isinstance(exc, KeyError) else str(exc)) or type(exc).__name__
        known = (UsageError, ConnectionError, TimeoutError, FileNotFoundError, FileExistsError, MissingExtraError,
                 OutputDirError)
        shown = message if isinstance(exc, known) else f"{type(exc).__name__}: {message} (--log-level DEBUG shows the traceback)"
        from .run_stop import WRITE_REFUSED_ERRNOS, is_storage_line, permission_line, storage_stop_line

        outputs = [getattr(args, name, None) for name in ("output_dir", "output", "video_dir", "resume",
                                                                "save_plot_path")]
        if is_storage_line(exc, *outputs):  # a full disk, a read-only folder a command did not word: path, remedy
            shown = storage_stop_line(exc, args.command)
        elif isinstance(exc, OSError) and exc.errno in WRITE_REFUSED_ERRNOS and exc.filename:  # a file read, as often
            shown = permission_line(exc)
        print(f"gr00t-eval {args.command}: error: {shown}", file=sys.stderr)
        if args.log_level == "DEBUG":
            traceback.print_exception(exc, file=sys.stderr)
        return USAGE_EXIT_CODE


def _exit_message(exc: SystemExit) -> str:
    """The error line of a SystemExit from a command: its text, or which sys.exit ended the command before its end
    (code it ran, an env or adapter, called it: an exit status 0 would have read as a finished command)."""
    from .rollout.config import exit_call

    if not isinstance(exc.code, str):
        return f"the command was stopped by {exit_call(exc)} in code it ran (an env, adapter or imported module)"
    return exc.code[len("error: "):] if exc.code.startswith("error: ") else exc.code


def _command_named(words: Sequence[str]) -> str:
    """The sub-command a command line names, for a stop that comes before it is parsed ('' when it names none)."""
    words = iter(words)
    for word in words:
        if word in ("--log-level", "--log_level"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return ""


def _run_command(args: argparse.Namespace) -> int:
    """Dispatch a parsed command line to its command function."""
    _refuse_reference_flags(args)
    if hasattr(args, "timeout_ms"):
        _check_connection_args(args)
        from . import connection

        connection.warn_of_secret_on_command_line(args)
    if args.command == "rollout" and not args.resume and not args.env_name:
        raise UsageError("rollout needs --env-name (or --resume DIR to continue a run)")
    scaled = getattr(args, "scale_command", None)
    if scaled is not None:
        code = scaled(args)  # None: not a scaled command, run below
        if code is not None:
            return code
    commands: Dict[str, Any] = {"open-loop": cmd_open_loop, "rollout": cmd_rollout, "record": cmd_record}
    return commands[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
