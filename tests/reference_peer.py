"""A reference-style peer written from server-eval.md §2, plus the small policies the wire tests share.

`ReferenceServer` is a REP server and `ReferenceClient` a REQ client that speak what NVIDIA's peers speak,
one wire generation each (`generation=`):

- "current": the newest `server_client.py` (msgpack-numpy hooks, `__ModalityConfig__`, `{"error": ...}` replies,
  get_action replies `[action, info]`);
- "npsave": the np.save-era `server_client.py` of early N1.6 and early N1.7 commits (`__ndarray_class__` wrappers
  made with np.save, `__ModalityConfig_class__` with `as_json` a map, str keys only, no msgpack-numpy decoder,
  handlers called `handler(**data)`); `early=True` is the old spelling of this one;
- "n15": N1/N1.5 `gr00t/eval/service.py` (the np.save arrays, `__ModalityConfig_class__` with `as_json` a JSON
  *string*, handlers called positionally `handler(data)`, get_action's data the flat observation itself and its
  reply the action dict alone, no `reset` endpoint).

They deliberately share no code with gr00t_client's codec.
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any, Callable, Dict, Optional

import msgpack
import msgpack_numpy
import numpy as np
import zmq

from gr00t_client import BasePolicy, ModalityConfig
from serving import running_server  # noqa: F401 (re-exported for the tests)

# --- the reference encodings ----------------------------------------------------------------------


class RefModalityConfig:
    """A modality config as the reference holds it; `as_json` is what `to_json_serializable` produces."""

    def __init__(self, as_json: Dict[str, Any]) -> None:
        self.as_json = as_json

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, RefModalityConfig) and other.as_json == self.as_json


def _current_default(obj: Any) -> Any:
    if isinstance(obj, RefModalityConfig):
        return {"__ModalityConfig__": True, "as_json": obj.as_json}
    return msgpack_numpy.encode(obj)


def _current_hook(obj: Dict[Any, Any]) -> Any:
    for marker in ("__ModalityConfig__", "__ModalityConfig_class__"):
        if marker in obj or marker.encode() in obj:
            payload = obj.get("as_json", obj.get(b"as_json"))
            return RefModalityConfig(payload)
    if "__ndarray_class__" in obj:
        return np.load(io.BytesIO(obj["as_npy"]), allow_pickle=False)
    return msgpack_numpy.decode(obj)


def _early_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, obj, allow_pickle=False)
        return {"__ndarray_class__": True, "as_npy": buffer.getvalue()}
    if isinstance(obj, RefModalityConfig):
        return {"__ModalityConfig_class__": True, "as_json": obj.as_json}
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


def _early_hook(obj: Dict[Any, Any]) -> Any:
    # As the np.save-era MsgSerializer.decode_custom_classes: str keys only, ModalityConfig(**as_json).
    if "__ModalityConfig_class__" in obj:
        return RefModalityConfig(dict(obj["as_json"]))
    if "__ndarray_class__" in obj:
        return np.load(io.BytesIO(obj["as_npy"]), allow_pickle=False)
    return obj


def _n15_default(obj: Any) -> Any:
    if isinstance(obj, RefModalityConfig):  # pydantic's model_dump_json(): a JSON string, not a map
        return {"__ModalityConfig_class__": True, "as_json": json.dumps(obj.as_json)}
    return _early_default(obj)


def _n15_hook(obj: Dict[Any, Any]) -> Any:
    # As service.py: json.loads(as_json), which raises TypeError when as_json is a map.
    if "__ModalityConfig_class__" in obj:
        return RefModalityConfig(json.loads(obj["as_json"]))
    if "__ndarray_class__" in obj:
        return np.load(io.BytesIO(obj["as_npy"]), allow_pickle=False)
    return obj


GENERATIONS = ("current", "npsave", "n15")
_DEFAULTS = {"current": _current_default, "npsave": _early_default, "n15": _n15_default}
_HOOKS = {"current": _current_hook, "npsave": _early_hook, "n15": _n15_hook}


def _generation(early: bool, generation: Optional[str]) -> str:
    chosen = generation or ("npsave" if early else "current")
    if chosen not in GENERATIONS:
        raise ValueError(f"generation must be one of {GENERATIONS}, got {chosen!r}")
    return chosen


def ref_packb(obj: Any, early: bool = False, generation: Optional[str] = None) -> bytes:
    """Serialise as the reference does (current: msgpack-numpy; npsave/early and n15: np.save wrappers)."""
    return msgpack.packb(obj, default=_DEFAULTS[_generation(early, generation)])


def ref_unpackb(data: bytes, early: bool = False, generation: Optional[str] = None) -> Any:
    """Deserialise as the reference does; the current format's arrays come back read-only."""
    return msgpack.unpackb(data, object_hook=_HOOKS[_generation(early, generation)], raw=False)


# --- the reference server (REP, one thread, one request at a time) ------------------------------


class ReferenceServer:
    """A REP server with the reference endpoint table; handlers are plain callables."""

    def __init__(
        self,
        handlers: Dict[str, Callable[..., Any]],
        early: bool = False,
        api_token: Optional[str] = None,
        port: int = 0,
        generation: Optional[str] = None,
    ) -> None:
        self.generation = _generation(early, generation)
        self.api_token = api_token
        self.requests: list = []  # decoded requests, for tests to inspect
        self._endpoints: Dict[str, tuple] = {
            "ping": (lambda: {"status": "ok", "message": "Server is running"}, False),
            "kill": (self._kill, False),
            "get_action": (handlers["get_action"], True),
            "reset": (handlers.get("reset", lambda options=None: {}), True),
            "get_modality_config": (handlers.get("get_modality_config", lambda: {}), False),
        }
        for name, handler in handlers.items():  # register_endpoint(name, handler, requires_input=True)
            self._endpoints.setdefault(name, (handler, True))
        if self.generation == "n15":  # service.py registers no reset endpoint
            del self._endpoints["reset"]
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        if port:
            self._socket.bind(f"tcp://127.0.0.1:{port}")
            self.port = port
        else:
            self.port = self._socket.bind_to_random_port("tcp://127.0.0.1")
        self._running = True
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _kill(self) -> None:
        self._running = False

    def _loop(self) -> None:
        while self._running:
            if not self._socket.poll(50):
                continue
            message = self._socket.recv()
            try:
                request = ref_unpackb(message, generation=self.generation)
                self.requests.append(request)
                if self.api_token and request.get("api_token") != self.api_token:
                    reply: Any = {"error": "Unauthorized: Invalid API token"}
                else:
                    endpoint = request.get("endpoint", "get_action")
                    if endpoint not in self._endpoints:
                        raise ValueError(f"Unknown endpoint: {endpoint}")
                    handler, requires_input = self._endpoints[endpoint]
                    if not requires_input:
                        reply = handler()
                    elif self.generation == "n15":  # service.py: handler(data), data the flat observation
                        reply = handler(request.get("data", {}))
                    else:
                        reply = handler(**request.get("data", {}))
                payload = ref_packb(reply, generation=self.generation)
            except Exception as exc:  # the reference answers every failure with {"error": str(e)}
                payload = ref_packb({"error": str(exc)}, generation=self.generation)
            self._socket.send(payload)

    def __enter__(self) -> "ReferenceServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._running = False
        self._thread.join(5)
        self._socket.close(linger=0)
        self._context.term()


# --- the reference client (REQ with RCVTIMEO/SNDTIMEO) ------------------------------------------


class ReferenceClient:
    """A REQ client that builds requests and reads replies exactly like the reference PolicyClient."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        timeout_ms: int = 5000,
        api_token: Optional[str] = None,
        early: bool = False,
        generation: Optional[str] = None,
    ) -> None:
        self.generation = _generation(early, generation)
        self.api_token = api_token
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REQ)
        self._socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self._socket.setsockopt(zmq.SNDTIMEO, timeout_ms)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(f"tcp://{host}:{port}")

    def call_endpoint(self, endpoint: str, data: Any = None, requires_input: bool = True) -> Any:
        request: Dict[str, Any] = {"endpoint": endpoint}
        if requires_input:
            request["data"] = data
        if self.api_token:
            request["api_token"] = self.api_token
        self._socket.send(ref_packb(request, generation=self.generation))
        reply = ref_unpackb(self._socket.recv(), generation=self.generation)
        # service.py's BaseInferenceClient tests `"error" in response` on every reply, with no isinstance check
        # (a nil reply raises TypeError there); the newer clients check for a map first.
        if (self.generation == "n15" or isinstance(reply, dict)) and "error" in reply:
            raise RuntimeError(f"Server error: {reply['error']}")
        return reply

    def get_action(self, observation: Dict[str, Any], options: Any = None) -> Any:
        """(action, info) like PolicyClient; for "n15", ExternalRobotInferenceClient's flat obs -> action dict."""
        if self.generation == "n15":
            return self.call_endpoint("get_action", observation)
        return tuple(self.call_endpoint("get_action", {"observation": observation, "options": options}))

    def get_modality_config(self) -> Any:
        return self.call_endpoint("get_modality_config", requires_input=False)

    def kill_server(self) -> None:
        self.call_endpoint("kill", requires_input=False)

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()

    def __enter__(self) -> "ReferenceClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# --- shared test doubles --------------------------------------------------------------------------

LIBERO_VIDEO_KEYS = ["image", "wrist_image"]
LIBERO_STATE_KEYS = ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper_2"]
LANGUAGE_KEY = "annotation.human.action.task_description"


def libero_like_configs(action_horizon: int = 16) -> Dict[str, ModalityConfig]:
    """A LIBERO-shaped config: 2 cameras, 8 one-dim state keys, 8 action keys, one language key."""
    return {
        "video": ModalityConfig(delta_indices=[0], modality_keys=list(LIBERO_VIDEO_KEYS)),
        "state": ModalityConfig(delta_indices=[0], modality_keys=list(LIBERO_STATE_KEYS)),
        "action": ModalityConfig(delta_indices=list(range(action_horizon)), modality_keys=list(LIBERO_STATE_KEYS)),
        "language": ModalityConfig(delta_indices=[0], modality_keys=[LANGUAGE_KEY]),
    }


def libero_like_observation(batch: int = 1, height: int = 256, width: int = 256, seed: int = 0, cameras: Optional[list] = None) -> Dict[str, Any]:
    """A well-formed nested observation for libero_like_configs()."""
    rng = np.random.default_rng(seed)
    return {
        "video": {k: rng.integers(0, 255, (batch, 1, height, width, 3), dtype=np.uint8) for k in cameras or LIBERO_VIDEO_KEYS},
        "state": {k: rng.standard_normal((batch, 1, 1)).astype(np.float32) for k in LIBERO_STATE_KEYS},
        "language": {LANGUAGE_KEY: [["pick up the bowl"] for _ in range(batch)]},
    }


class EchoPolicy(BasePolicy):
    """Returns a zero action of the configured shape; info echoes options['tag'] and the state's first value."""

    def __init__(self, configs: Optional[Dict[str, ModalityConfig]] = None, strict: bool = False, delay_s: float = 0.0) -> None:
        super().__init__(strict=strict)
        self.configs = configs if configs is not None else libero_like_configs()
        self.delay_s = delay_s
        self.calls = 0
        self.resets = 0

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        import time

        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        batch = next(iter(observation["state"].values())).shape[0] if observation.get("state") else 1
        horizon = self.configs["action"].horizon
        action = {k: np.zeros((batch, horizon, 1), np.float32) for k in self.configs["action"].modality_keys}
        info: Dict[str, Any] = {"tag": (options or {}).get("tag")}
        if observation.get("state"):
            info["first_state"] = float(next(iter(observation["state"].values())).reshape(-1)[0])
        return action, info

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        self.resets += 1
        return {"resets": self.resets}

    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        return self.configs


def raw_round_trip(port: int, frames: Any, timeout_ms: int = 5000, host: str = "127.0.0.1") -> Optional[list]:
    """Send raw frames from a fresh REQ socket; return the reply frames as bytes, or None on timeout."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://{host}:{port}")
        sock.send_multipart([frames] if isinstance(frames, bytes) else list(frames))
        if not sock.poll(timeout_ms):
            return None
        return sock.recv_multipart()
    finally:
        sock.close(linger=0)
