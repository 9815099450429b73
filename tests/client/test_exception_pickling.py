"""Every exception gr00t-client and gr00t-eval raise comes back from pickle as it went in (type, message and
attributes): a Ray shard's error reaches the driver pickled. MessageTooLargeError did not come back at all (its
parent's __reduce__ called its (endpoint, size, limit) constructor with (message, endpoint)). A test below fails when
a new exception class is added without a case here."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import numpy as np
import pytest

import gr00t_client
import gr00t_eval
from gr00t_client import client as client_module
from gr00t_client import chunking, chunking_merge, cli_flags, codec, curve, frame_views, json_keys, policy


def _wire_decode_error_noting_npsave():
    error = codec.WireDecodeError("reply holds a ModalityConfig field 'x' this client cannot read")
    error.written_npsave = True  # set by the codec on the error it raises
    return error


def _cases():
    from gr00t_eval import batch, cli_errors, extras, open_loop, policy_identity, ray_connect, run_dir, run_stop, shard
    from gr00t_eval import metrics
    from gr00t_eval.dataset import errors as dataset_errors
    from gr00t_eval.rollout import liveness, runner, stalls, vector_envs, worker_deaths

    return [
        client_module.PolicyServerError("ValueError: bad observation", "get_action"),
        client_module.ServerStoppingError("server is shutting down", "get_action"),
        client_module.UpstreamFailedError("upstream policy server failed at tcp://127.0.0.1:5555: PolicyTimeoutError: "
                                          "no reply", "get_action"),
        client_module.DeadlineNotRunError("'get_action' was not run: the client's deadline passed while it waited",
                                          "get_action"),
        client_module.ServerBusyError("server busy: 1024 requests are waiting for the policy; try again", "get_action"),
        client_module.MessageTooLargeError("get_action", 300_000_000, 268_435_456),
        client_module.ForkedSessionError("get_action", "tcp://127.0.0.1:5555", "3f2a"),
        client_module.PolicyTimeoutError("policy server at 127.0.0.1:5555 did not answer 'get_action' within 15000 ms"),
        client_module.ReplyLostError("the connection to the policy server at 127.0.0.1:5555 closed"),
        client_module.ClientClosedError("PolicyClient for tcp://127.0.0.1:5555 is closed, so 'ping' was not sent"),
        client_module._ReplyOverCap(300_000_000, 3),
        codec.WireDecodeError("reply to 'get_action' has 2 frames; expected 1"),
        _wire_decode_error_noting_npsave(),
        codec.WireEncodeError("object-dtype arrays have no wire form"),
        codec.DecodeLimitError("more than 1000000 items"),
        curve.HandshakeError("CURVE handshake with tcp://127.0.0.1:5555 failed: the server's key is not this one"),
        json_keys.RepeatedKeyError("gripper", "new_embodiment.action"),
        frame_views.NeedsFullUnpacker(),
        policy.PolicyValidationError("no modality config"),
        policy.ObservationError("Observation key 'state.x' must have dtype float32; got float64"),
        policy.ActionError("Action key 'action.x' is missing"),
        chunking.PolicyPositionError("the policy reports current_step 16 for env row 0; expected 8"),
        chunking_merge.MergeResultError("merge function returned shape (2, 3); expected (2, 4)"),
        policy.NonFiniteActionError("Action key 'action.x' has non-finite values", {"action.x": np.array([[np.nan]])},
                                    "action.x", [0]),
        batch.JobError("job 'reach': n_episodes must be at least 1", "reach"),
        cli_errors.UsageError("--n-episodes must be at least 1"),
        dataset_errors.DatasetError("meta/info.json lacks 'fps'"),
        dataset_errors.DatasetFileNotFoundError("dataset directory not found: /data/x"),
        dataset_errors.DatasetColumnNotFoundError("/data/x/episode_000001.parquet: no column 'observation.state'"),
        extras.MissingExtraError("--ray-address needs Ray; install it with: pip install 'gr00t-eval[ray]'"),
        open_loop.TrajectoryError("policy reset failed: Server error: IndexError: episode_index 8 out of range"),
        metrics.NonFiniteError("its action MSE is inf: the ground truth and prediction differ by more than float64 can "
                               "square or add up"),
        policy_identity.ServedPolicyChanged("the server at tcp://127.0.0.1:5555 now serves ReplayPolicy (...)"),
        ray_connect.RayConnectError("nothing answers at --ray-address 127.0.0.1:6379"),
        liveness.PolicyServerUnreachableError("tcp://127.0.0.1:5555 stopped answering"),
        stalls.EnvStalledError("env 1 did not answer a step within 30 s"),
        worker_deaths.EnvWorkerDiedError("an env worker process died: env 0 (episode 2, seed 2) was killed by SIGKILL"),
        runner.RecordedEnvMismatchError("the policy replays episode 0 as recorded in 'metaworld/reach-v3'"),
        run_dir.OutputDirError("--output-dir out is not empty"),
        run_stop.OutputFolderGone(2, "the output folder disappeared (unmounted or deleted)", "/data/run"),
        shard.MergeError("shards of different plans"),
        vector_envs._ClosingCutShort("signal 2"),
        vector_envs.SharedMemoryUnavailableError("/dev/shm is full (No space left on device): the env worker "
                                                 "processes need POSIX semaphores there"),
        vector_envs.EnvWorkersUnstartableError("the env worker processes could not be started: Too many open files"),
        cli_flags.HomeFolderUnknownError("cannot expand '~' in '~/ckpt': $HOME is unset and uid 54321 has no passwd "
                                         "entry; set HOME or give an absolute path"),
    ]


def _same(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    return a == b


@pytest.mark.parametrize("error", _cases(), ids=lambda error: type(error).__name__)
def test_an_exception_comes_back_from_pickle_with_its_message_and_attributes(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error) and back.args == error.args
    assert _same(vars(back), vars(error))


def test_message_too_large_error_keeps_its_size_and_limit_and_its_own_words():
    error = client_module.MessageTooLargeError("get_action", 300_000_000, 268_435_456)
    back = pickle.loads(pickle.dumps(error))
    assert (back.endpoint, back.size, back.limit) == ("get_action", 300_000_000, 268_435_456)
    assert str(back).startswith("request 'get_action' of 300000000 bytes exceeds this server's limit of 268435456")
    assert isinstance(back, client_module.PolicyServerError)


def test_every_exception_class_of_the_client_and_eval_packages_is_checked_here():
    defined = set()
    for package in (gr00t_client, gr00t_eval):
        for found in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            try:
                module = importlib.import_module(found.name)
            except ImportError:  # an optional extra's module (its own errors are checked where it installs)
                continue
            defined.update(value for value in vars(module).values()
                           if inspect.isclass(value) and issubclass(value, BaseException)
                           and value.__module__ == module.__name__)
    checked = {type(error) for error in _cases()}
    assert sorted(cls.__qualname__ for cls in defined - checked) == []
