"""The package's face: lazy exports without torch, start_server as the reference has it, and replies in the
wire format each request came in."""

from __future__ import annotations

import subprocess
import sys
import threading

import msgpack
import numpy as np
from reference_peer import EchoPolicy, raw_round_trip
from serving import running_server
from serving_ports import free_port

from gr00t_client import PolicyClient, codec
from gr00t_server import PolicyServer


def test_import_gr00t_server_and_its_public_names_import_no_torch():
    script = (
        "import sys, gr00t_server\n"
        "from gr00t_server import PolicyServer, ReplayPolicy, Gr00tSimPolicyWrapper, ServerLimits\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'Gr00tPolicy' in dir(gr00t_server)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_a_first_import_of_the_processing_modules_from_several_threads_at_once_succeeds():
    """The processing package imported processor and its modules eagerly: a thread importing the package and another
    importing one of those modules at once failed ("cannot import name 'Gr00tN1d7Processor' from partially initialized
    module", KeyError 'gr00t_server.processing'), in every fresh interpreter."""
    script = (
        "import importlib, threading\n"
        "names = ['gr00t_server.test_checkpoint', 'gr00t_server.processing.actions',\n"
        "         'gr00t_server.policies.gr00t_policy', 'gr00t_server.processing.norm_params']\n"
        "errors, barrier = [], threading.Barrier(len(names))\n"
        "def load(name):\n"
        "    barrier.wait()\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        errors.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "threads = [threading.Thread(target=load, args=(name,)) for name in names]\n"
        "[thread.start() for thread in threads]\n"
        "[thread.join() for thread in threads]\n"
        "from gr00t_server.processing import Gr00tN1d7Processor, num_image_tokens\n"
        "print(errors or 'ok')\n"
    )
    for _ in range(2):  # the imports race: two fresh interpreters (each failed before)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert result.stdout.strip() == "ok", result.stdout + result.stderr


def test_start_server_serves_until_kill_and_frees_the_port():
    port = free_port()
    thread = threading.Thread(target=PolicyServer.start_server, args=(EchoPolicy(), port), daemon=True)
    thread.start()
    with PolicyClient(port=port, timeout_ms=5000) as client:
        assert client.ping()
        client.kill_server()
    thread.join(5)
    assert not thread.is_alive()
    with PolicyServer(EchoPolicy(), port=port):  # binds again: the port was released
        pass


def npsave_request(endpoint: str, data=None) -> bytes:
    envelope = {"endpoint": endpoint} if data is None else {"endpoint": endpoint, "data": data}
    return codec.encode_early_n16(envelope)


def test_an_npsave_era_request_gets_npsave_arrays_back():
    observation = {"state": {"x": np.ones((1, 1, 1), np.float32)}}
    with running_server(EchoPolicy()) as server:
        reply = raw_round_trip(server.port, npsave_request("get_action", {"observation": observation, "options": None}))
    action, _info = msgpack.unpackb(reply[0], raw=False)
    array_map = next(iter(action.values()))
    assert set(array_map) == {"__ndarray_class__", "as_npy"}
    decoded_action, _ = codec.decode(reply[0])
    assert next(iter(decoded_action.values())).dtype == np.float32


def test_modality_configs_carry_both_markers_for_every_single_frame_peer():
    with running_server(EchoPolicy()) as server:
        npsave_reply = raw_round_trip(server.port, npsave_request("get_modality_config"))
        current_reply = raw_round_trip(server.port, codec.encode({"endpoint": "get_modality_config"}))
    npsave_config = next(iter(msgpack.unpackb(npsave_reply[0], raw=False).values()))
    current_config = next(iter(msgpack.unpackb(current_reply[0], raw=False).values()))
    for config in (npsave_config, current_config):  # a request without arrays cannot tell its era: both markers
        assert config["__ModalityConfig__"] is True and config["__ModalityConfig_class__"] is True


def test_the_processing_submodules_are_attributes_of_the_package_after_importing_it():
    """The eager re-exports made every submodule an attribute (`processing.image`); the lazy ones did not, and
    `import gr00t_server.processing as p; p.image` raised AttributeError."""
    import subprocess
    import sys

    code = ("import gr00t_server.processing as p\n"
            "assert callable(p.image.resize_area) and p.processor.Gr00tN1d7Processor is p.Gr00tN1d7Processor\n"
            "assert {'image', 'processor', 'vision_patches', 'video_checks'} <= set(dir(p))\n"
            "assert not hasattr(p, 'image.resize_area') and not hasattr(p, 'no_such.thing') and not hasattr(p, '')\n"
            "try:\n    p.no_such_module\nexcept AttributeError as exc:\n    assert 'no_such_module' in str(exc)\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
