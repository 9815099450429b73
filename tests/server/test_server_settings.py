"""PolicyServer's numeric settings are checked when it is made: a value it cannot run with is refused naming the
setting, the value and what it must be, instead of crashing the socket loop later (an infinite gather window did, at
the first batched request), spinning a core (a poll interval of 0) or dropping every request unanswered (a message
cap of 0)."""

import threading

import numpy as np
import pytest

from gr00t_client import PolicyClient
from gr00t_server import PolicyServer
from gr00t_server.serving.server import check_server_settings
from serving import running_server
from test_batching import RowEchoPolicy

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    "setting, value, expected",
    [
        ("batch_timeout_ms", INF, "a finite number of milliseconds from 0 to 3600000"),
        ("batch_timeout_ms", NAN, "a finite number of milliseconds from 0 to 3600000"),
        ("batch_timeout_ms", -1.0, "a finite number of milliseconds from 0 to 3600000"),
        ("batch_timeout_ms", "2", "a finite number of milliseconds from 0 to 3600000"),
        ("inline_below_ms", INF, "a finite number of milliseconds from 0 (off) to 3600000"),
        ("inline_below_ms", -0.5, "a finite number of milliseconds from 0 (off) to 3600000"),
        ("shutdown_timeout_s", NAN, "a finite number of seconds from 0 to 86400"),
        ("shutdown_timeout_s", INF, "a finite number of seconds from 0 to 86400"),
        ("shutdown_timeout_s", -1, "a finite number of seconds from 0 to 86400"),
        ("poll_interval_ms", 0, "a whole number of milliseconds from 1 to 3600000"),
        ("poll_interval_ms", -5, "a whole number of milliseconds from 1 to 3600000"),
        ("poll_interval_ms", 2.5, "a whole number of milliseconds from 1 to 3600000"),
        ("max_message_bytes", 0, "a whole number of bytes >= 1"),
        ("max_message_bytes", -1, "a whole number of bytes >= 1"),
        ("max_batch_size", 0, "a whole number of rows from 1 (batching off) to 1024"),
        ("max_batch_size", True, "a whole number of rows from 1 (batching off) to 1024"),
        ("max_batch_size", INF, "a whole number of rows from 1 (batching off) to 1024"),
        # accepted up to 2**31 - 1: serve's warm-up then ran a batch of 100000 rows (minutes, 15 GiB)
        ("max_batch_size", 1025, "a whole number of rows from 1 (batching off) to 1024"),
        ("max_batch_size", 2**31 - 1, "a whole number of rows from 1 (batching off) to 1024"),
        ("port", 70000, "a port number from 0 (any free port) to 65535"),
        ("port", -1, "a port number from 0 (any free port) to 65535"),
        ("metrics_port", 65536, "a port number from 0 (any free port) to 65535, or None"),
    ],
)
def test_a_setting_the_server_cannot_run_with_is_refused_naming_it(setting, value, expected):
    with pytest.raises(ValueError) as refused:
        PolicyServer(RowEchoPolicy(), **{"port": 0, setting: value})
    assert str(refused.value) == f"{setting} must be {expected}, got {value!r}"


def test_edge_values_are_accepted_and_kept_as_numbers():
    server = PolicyServer(RowEchoPolicy(), port=0, batch_timeout_ms=0, inline_below_ms=0, poll_interval_ms=1,
                          max_batch_size=4.0, shutdown_timeout_s=0, max_message_bytes=1, metrics_port=None)
    try:
        assert (server.batch_timeout_ms, server.inline_below_ms, server.poll_interval_ms) == (0.0, 0.0, 1)
        assert (server.max_batch_size, server.max_message_bytes, server.shutdown_timeout_s) == (4, 1, 0.0)
        assert type(server.max_batch_size) is int and type(server.poll_interval_ms) is int
    finally:
        server.close()
    server = PolicyServer(RowEchoPolicy(), port=0, max_batch_size=1024)
    try:
        assert server.max_batch_size == 1024
    finally:
        server.close()


def test_numpy_numbers_are_taken():
    server = PolicyServer(RowEchoPolicy(), port=np.int64(0), max_batch_size=np.int32(8), batch_timeout_ms=np.float32(2.5))
    try:
        assert (server.max_batch_size, server.batch_timeout_ms) == (8, 2.5) and type(server.max_batch_size) is int
    finally:
        server.close()


def test_the_cli_spelling_names_the_flag():
    with pytest.raises(ValueError, match=r"^--batch-timeout-ms must be a finite number .* got inf$"):
        check_server_settings(spell=lambda name: "--" + name.replace("_", "-"), batch_timeout_ms=INF)


def test_the_longest_gather_window_accepted_serves_a_full_batch_at_once():
    # The window bounds the socket loop's poll timeout while requests are gathered: the largest accepted one must
    # neither overflow it nor hold a full batch back.
    policy = RowEchoPolicy()
    with running_server(policy, max_batch_size=2, batch_timeout_ms=3_600_000) as server:
        results = {}
        barrier = threading.Barrier(2)

        def call(client_id: int) -> None:
            with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=20000) as client:
                barrier.wait()
                state = np.full((1, 1, 3), float(client_id), dtype=np.float32)
                results[client_id] = client.get_action({"state": {"joints": state}})[0]["arm"]

        threads = [threading.Thread(target=call, args=(i,)) for i in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results) == [1, 2]
        for client_id, arm in results.items():
            assert arm.shape == (1, 4, 2) and np.all(arm == client_id * 10.0)
        assert policy.row_counts == [2]  # one merged call: the batch was full, nothing waited for the window
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as client:
            assert client.ping()  # and the loop still turns


def test_serve_raises_its_open_file_limit_to_the_hard_limit():
    """A server holds a file descriptor per connection; at a soft limit of 1024 libzmq stops accepting clients
    without a word and spins on its listener."""
    resource = pytest.importorskip("resource")
    from gr00t_server.cli import _raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 300:
        pytest.skip(f"hard open-file limit {hard} leaves no room to lower the soft one")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        _raise_open_file_limit()
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert raised == (hard if hard != resource.RLIM_INFINITY else 1 << 20)


def test_serve_as_pid_1_warns_that_an_early_stop_is_lost_without_an_init(caplog):
    """In a container without an init the kernel dropped a SIGTERM that came during serve's imports, and the server
    loaded and served on until docker stop killed it; nothing said why."""
    from gr00t_server.serve_cli import _warn_if_pid_one

    with caplog.at_level("WARNING", logger="gr00t_server"):
        _warn_if_pid_one(4321)
        assert caplog.records == []
        _warn_if_pid_one(1)
    assert [record.getMessage() for record in caplog.records] == [
        "serve runs as PID 1 (a container started without an init): the kernel drops a stop signal (docker stop's "
        "SIGTERM, Ctrl-C) that comes before serve's handlers are in place, in its first tenth of a second or so, and "
        "the server then runs on until it is killed; start the container with an init (docker run --init, or tini as "
        "its entrypoint)"]


def test_a_metrics_port_that_is_also_the_port_is_refused_naming_both():
    """It failed only at start(), as "Address already in use", sending the user looking for another process."""
    with pytest.raises(ValueError) as refused:
        PolicyServer(RowEchoPolicy(), port=47123, metrics_port=47123)
    assert str(refused.value) == ("metrics_port 47123 is also port: the metrics endpoint needs a port of its own (pass "
                                  "another, or 0 for any free one)")
    PolicyServer(RowEchoPolicy(), port=0, metrics_port=0).close()  # 0 for both: each gets a free port of its own
