"""Run by tests/e2e/test_client_min_versions.py inside a venv of gr00t-client's oldest supported Python and the
lowest versions its pyproject admits: the robot-side client against a real gr00t-server over loopback.

    python min_versions_smoke.py PLAIN_PORT CURVE_PORT SERVER_PUBLIC_KEY WRONG_KEY DEAD_PORT

Imports only gr00t_client and its dependencies; prints one line per check and the versions it ran with.
"""

import sys

import msgpack
import numpy as np
import zmq

import gr00t_client
from gr00t_client import ActionChunker, HandshakeError, PolicyClient, PolicyServerError, PolicyTimeoutError

STATE_KEYS = ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper_2"]
LANGUAGE_KEY = "annotation.human.action.task_description"


def observation(batch: int, first_state: float) -> dict:
    rng = np.random.default_rng(batch)
    state = {k: rng.standard_normal((batch, 1, 1)).astype(np.float32) for k in STATE_KEYS}
    state["x"][:] = first_state
    return {
        # one camera above the codec's copy threshold (a frame of its own on the multipart wire), one below
        "video": {"image": rng.integers(0, 255, (batch, 1, 256, 256, 3), dtype=np.uint8),
                  "wrist_image": rng.integers(0, 255, (batch, 1, 32, 32, 3), dtype=np.uint8)},
        "state": state,
        "language": {LANGUAGE_KEY: [["pick up the bowl"] for _ in range(batch)]},
    }


def check_plain(port: int) -> None:
    for wire in ("multipart", "reference"):
        with PolicyClient(host="127.0.0.1", port=port, timeout_ms=10000, wire=wire) as client:
            assert client.ping() is True
            configs = client.get_modality_config()
            assert configs["action"].modality_keys == STATE_KEYS, configs["action"].modality_keys
            assert configs["action"].delta_indices == list(range(16)), configs["action"].delta_indices
            action, info = client.get_action(observation(3, 0.25), options={"tag": wire})
            assert sorted(action) == sorted(STATE_KEYS), sorted(action)
            assert all(value.shape == (3, 16, 1) and value.dtype == np.float32 for value in action.values())
            assert info["tag"] == wire and abs(info["first_state"] - 0.25) < 1e-6, info
            assert client.reset() == {"resets": 1 if wire == "multipart" else 2}
            try:
                client.call_endpoint("no_such_endpoint", {})
            except PolicyServerError as exc:
                assert "Unknown endpoint" in str(exc), exc
            else:
                raise AssertionError("an unknown endpoint was not refused")
            bad = observation(1, 0.0)
            bad["state"]["y"][0, 0, 0] = np.nan
            try:
                client.get_action(bad)
            except PolicyServerError as exc:
                assert "state.y" in str(exc) and "non-finite" in str(exc), exc
            else:
                raise AssertionError("a NaN state was not refused")
            assert client.ping() is True  # the server answers after refusing
        print(f"plain {wire}: ping, modality config, get_action, reset, errors ok")
    with PolicyClient(host="127.0.0.1", port=port, timeout_ms=10000) as client:
        with ActionChunker(client, n_action_steps=4, asynchronous=True, prefetch_steps=1) as chunker:
            for _ in range(10):
                step, _info = chunker.get_action(observation(2, 0.5))
                assert step["x"].shape == (2, 1), step["x"].shape
            assert chunker.stats.calls == 10
    print("ActionChunker (asynchronous) over the client ok")


def check_curve(port: int, server_public_key: str, wrong_key: str) -> None:
    with PolicyClient(host="127.0.0.1", port=port, timeout_ms=10000, server_public_key=server_public_key) as client:
        action, _info = client.get_action(observation(1, 0.0))
        assert action["x"].shape == (1, 16, 1)
    with PolicyClient(host="127.0.0.1", port=port, timeout_ms=10000, server_public_key=wrong_key) as client:
        try:
            client.get_modality_config()  # ping() would answer False instead of raising
        except HandshakeError as exc:
            assert "key" in str(exc).lower(), exc
        else:
            raise AssertionError("a wrong server key was not reported")
    print("CURVE: encrypted get_action ok, a wrong server key raises HandshakeError")


def check_timeout(dead_port: int) -> None:
    with PolicyClient(host="127.0.0.1", port=dead_port, timeout_ms=300) as client:
        assert client.ping() is False
        try:
            client.get_modality_config()
        except PolicyTimeoutError as exc:
            assert "did not answer" in str(exc), exc
        else:
            raise AssertionError("no timeout against a port nobody answers")
    print("timeout against a dead port ok")


def main() -> None:
    plain_port, curve_port, server_public_key, wrong_key, dead_port = sys.argv[1:6]
    check_plain(int(plain_port))
    check_curve(int(curve_port), server_public_key, wrong_key)
    check_timeout(int(dead_port))
    print(f"versions: python {sys.version.split()[0]}, numpy {np.__version__}, pyzmq {zmq.__version__}, "
          f"libzmq {zmq.zmq_version()}, msgpack {'.'.join(map(str, msgpack.version))}, gr00t-client {gr00t_client.__version__}")


if __name__ == "__main__":
    main()
