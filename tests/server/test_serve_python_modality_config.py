"""`gr00t-server serve --dataset-path D --modality-config-path cfg.py`: a .py config is served under the tag it
registers (or the one of its tags --embodiment-tag names); a config file that raises is one line and exit 2.
Real datasets, config files and the real CLI (a subprocess on a real port where a server comes up)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.dataset_factory import ACTION_DIMS, make_dataset
from gr00t_client import PolicyClient
from gr00t_server.cli import main

from serving import free_port, served


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """The configs the in-process serves register stay out of the other tests' registry."""
    from gr00t_server import modality_configs

    monkeypatch.setattr(modality_configs, "MODALITY_CONFIGS", dict(modality_configs.MODALITY_CONFIGS))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("pyconfig") / "ds", lengths=(12,))


def write_config(path: Path, horizons: dict) -> Path:
    """A .py config registering, for each tag, the dataset's keys with an action horizon of its own."""
    lines = ["from gr00t_client import ModalityConfig", "from gr00t_server.modality_configs import register_modality_config"]
    for tag, horizon in horizons.items():
        lines.append(
            f"register_modality_config({tag!r}, {{\n"
            "    'video': ModalityConfig(delta_indices=[0], modality_keys=['image']),\n"
            "    'state': ModalityConfig(delta_indices=[0], modality_keys=['arm', 'gripper']),\n"
            f"    'action': ModalityConfig(delta_indices=list(range({horizon})), modality_keys=['arm', 'gripper']),\n"
            "    'language': ModalityConfig(delta_indices=[0], modality_keys=['annotation.human.action.task_description'])})")
    path.write_text("\n".join(lines) + "\n")
    return path


def served_tag_and_horizon(port: int):
    with PolicyClient(port=port, timeout_ms=10000) as client:
        action, _ = client.get_action({})
        assert action["arm"].shape[2] == ACTION_DIMS["arm"]
        return client.get_server_info()["embodiment_tag"], action["arm"].shape[1]


def test_a_py_config_registering_one_tag_is_served_under_it_without_embodiment_tag(dataset, tmp_path):
    config = write_config(tmp_path / "cfg.py", {"my_robot": 5})
    port = free_port()
    with served("serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), "--port", str(port)):
        assert served_tag_and_horizon(port) == ("my_robot", 5)


def test_the_start_up_block_names_only_the_tag_a_py_config_registers(dataset, tmp_path):
    """It said `Embodiment tag: NEW_EMBODIMENT (new_embodiment)`, the default not served, and then the served tag."""
    config = write_config(tmp_path / "cfg.py", {"my_robot": 5})
    with served("serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), "--port",
                str(free_port())) as server:
        tag_lines = [line.strip() for line in server.ready_lines if "Embodiment tag" in line]
    assert tag_lines == [f"Embodiment tag: my_robot (the one {config} registers)"]


def test_the_start_up_block_names_a_py_config_once_in_its_modality_config_line(dataset, tmp_path):
    """It had no `Modality config:` line, as the built-in and derived configs get; `Loaded modality config: cfg.py`
    came twice instead (a log line and a print)."""
    config = write_config(tmp_path / "cfg.py", {"my_robot": 5})
    with served("serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), "--port",
                str(free_port())) as server:
        config_lines = [line.strip() for line in server.ready_lines if "odality config" in line]
    assert config_lines == [f"Modality config: from {config} (action horizon 5)"]


def test_embodiment_tag_picks_one_of_the_tags_a_py_config_registers(dataset, tmp_path):
    config = write_config(tmp_path / "cfg.py", {"robot_a": 3, "robot_b": 5})
    port = free_port()
    with served("serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), "--port", str(port),
                "--embodiment-tag", "robot_b"):
        assert served_tag_and_horizon(port) == ("robot_b", 5)


def test_embodiment_tag_names_a_py_configs_tag_in_another_case(dataset, tmp_path):
    """serve takes a checkpoint's own tag in any case (MY_ROBOT serves my_robot); ROBOT_B was refused for a file that
    registers robot_b."""
    config = write_config(tmp_path / "cfg.py", {"robot_a": 3, "robot_b": 5})
    port = free_port()
    with served("serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), "--port", str(port),
                "--embodiment-tag", "ROBOT_B"):
        assert served_tag_and_horizon(port) == ("robot_b", 5)


@pytest.mark.parametrize("config_file", [None, "cfg.json"])
def test_a_replays_custom_tag_without_a_py_config_is_refused_saying_how_to_serve_one(dataset, tmp_path, capsys,
                                                                                     config_file):
    """It was "Unknown embodiment tag: 'my_robot'; known tags: <the built-in ones>" and no way forward."""
    args = ["serve", "--dataset-path", str(dataset), "--port", "1", "--embodiment-tag", "my_robot"]
    if config_file:
        config = tmp_path / config_file
        config.write_text("{}")
        args += ["--modality-config-path", str(config)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gr00t-server serve: error: Unknown embodiment tag: 'my_robot'; known tags: "), err
    named = f" ({config} is not one: a .json config carries no tag)" if config_file else ""
    assert err.endswith(". A replay serves a tag of its own only from a .py --modality-config-path that calls "
                        f"register_modality_config('my_robot', configs){named}\n"), err


def test_a_py_config_of_several_tags_without_embodiment_tag_is_refused_naming_them(dataset, tmp_path, capsys):
    config = write_config(tmp_path / "cfg.py", {"twin_a": 3, "twin_b": 5})
    assert main(["serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"gr00t-server serve: error: {config}: expected the file to call register_modality_config for exactly "
                   "one tag, it registered ['twin_a', 'twin_b']; pass the embodiment tag (--embodiment-tag) to choose\n")


def test_an_embodiment_tag_the_py_config_does_not_register_is_refused_naming_its_tags(dataset, tmp_path, capsys):
    config = write_config(tmp_path / "cfg.py", {"own_robot": 4})
    assert main(["serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), "--port", "1",
                 "--embodiment-tag", "libero_sim"]) == 2  # its built-in config must not stand in for the file's
    assert capsys.readouterr().err == (
        f"gr00t-server serve: error: {config}: registers modality configs for the tags ['own_robot'], not for "
        "'libero_sim'; choose one of them as the embodiment tag (--embodiment-tag), or leave it out when there is one\n")


def test_a_py_config_registering_nothing_is_refused_under_a_built_in_tag(dataset, tmp_path, capsys):
    config = tmp_path / "forgot_cfg.py"  # its configs made, register_modality_config forgotten
    config.write_text("from gr00t_client import ModalityConfig\nconfigs = {'action': ModalityConfig([0], ['arm'])}\n")
    assert main(["serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), "--port", "1",
                 "--embodiment-tag", "libero_sim"]) == 2  # libero_sim's built-in configs stood in for the file's
    assert capsys.readouterr().err == (
        f"gr00t-server serve: error: {config}: registers no modality configs; expected a .py file that calls "
        "register_modality_config(tag, configs) (the built-in configs of 'libero_sim' would stand in for the file's)\n")


def test_a_py_config_that_raises_is_one_line_naming_the_file_and_the_exception_exit_2(dataset, tmp_path, capsys):
    config = tmp_path / "broken_cfg.py"
    config.write_text("from gr00t_client import ModalityConfig\nModalityConfig(delta_indices=[0], no_such_field=1)\n")
    assert main(["serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"gr00t-server serve: error: {config}: running the modality config file raised TypeError: ")
    assert "no_such_field" in err and err.endswith("expected a .py file that calls register_modality_config(tag, configs)\n")


@pytest.mark.parametrize("statement,called", [("sys.exit(0)", "sys.exit(0)"), ("sys.exit()", "sys.exit()"),
                                              ("raise SystemExit('done')", "sys.exit('done')")])
def test_a_py_config_that_calls_sys_exit_is_one_line_naming_the_file_exit_2(dataset, tmp_path, capsys, statement, called):
    config = tmp_path / "exiting_cfg.py"  # copied from a script that ended with sys.exit(main())
    config.write_text(f"import sys\n{statement}\n")
    assert main(["serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"gr00t-server serve: error: {config}: running the modality config file called {called}; expected a "
                   ".py file that calls register_modality_config(tag, configs)\n")


@pytest.mark.parametrize("taken", ["port", "metrics port"])
def test_a_port_in_use_is_refused_before_the_replays_py_config_runs(dataset, tmp_path, capsys, taken):
    """Replay found a --port (or --metrics-port) in use only at ZeroMQ's bind, after its .py modality config (user
    code) had run and every data file had been read and hashed; --model-path was already refused before its load."""
    import socket

    if taken == "metrics port":
        pytest.importorskip("prometheus_client")
    ran = tmp_path / "config_ran"
    config = write_config(tmp_path / "cfg.py", {"own_robot": 4})
    config.write_text(f"open({str(ran)!r}, 'w').close()\n" + config.read_text())
    with socket.socket() as holder:  # another service listening on the port
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        held = holder.getsockname()[1]
        ports = ["--port", str(held)] if taken == "port" else ["--port", str(free_port()), "--metrics-port", str(held)]
        code = main(["serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), *ports])
    flag = "--port" if taken == "port" else "--metrics-port"
    assert code == 2
    assert capsys.readouterr().err == (f"gr00t-server serve: error: {flag} {held}: the port is in use on 127.0.0.1 "
                                       f"(another server?); pass another {flag}, or stop the process holding it\n")
    assert not ran.exists(), "the replay's .py modality config ran before the port in use was refused"


def _config_that_tries_the_ports(path: Path, ports: list, tried: Path) -> Path:
    """A .py config that binds each of `ports` as another server starting then would (SO_REUSEADDR, listen), writes
    what each bind met to `tried`, and raises: the serve running it fails while it still loads."""
    path.write_text(
        "import errno, socket\n"
        "met = []\n"
        f"for port in {ports!r}:\n"
        "    with socket.socket() as other:\n"
        "        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "        try:\n"
        "            other.bind(('127.0.0.1', port))\n"
        "            other.listen(1)\n"
        "            met.append('free')\n"
        "        except OSError as exc:\n"
        "            met.append(errno.errorcode[exc.errno])\n"
        f"open({str(tried)!r}, 'w').write(' '.join(met))\n"
        "raise RuntimeError('stop the serve here')\n")
    return path


@pytest.mark.parametrize("ports", ["port", "port and metrics port"])
def test_the_ports_are_held_from_their_check_until_the_server_binds_them(dataset, tmp_path, capsys, ports):
    """They were only checked, then free while the policy loaded: a second server started meanwhile passed the check
    too and loaded its model (minutes, gigabytes) before it was refused at the bind."""
    if ports == "port and metrics port":
        pytest.importorskip("prometheus_client")
    numbers = [free_port()] + ([free_port()] if ports == "port and metrics port" else [])
    tried = tmp_path / "tried"
    config = _config_that_tries_the_ports(tmp_path / "cfg.py", numbers, tried)
    flags = ["--port", str(numbers[0])] + (["--metrics-port", str(numbers[1])] if len(numbers) == 2 else [])
    assert main(["serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), *flags]) == 2
    assert "stop the serve here" in capsys.readouterr().err
    assert tried.read_text().split() == ["EADDRINUSE"] * len(numbers), f"binding {flags} while the policy loaded"


@pytest.mark.parametrize("ports", ["port", "port and metrics port"])
def test_a_start_that_fails_while_loading_frees_the_ports_it_held(dataset, tmp_path, capsys, ports):
    import socket

    if ports == "port and metrics port":
        pytest.importorskip("prometheus_client")
    numbers = [free_port()] + ([free_port()] if ports == "port and metrics port" else [])
    config = _config_that_tries_the_ports(tmp_path / "cfg.py", [], tmp_path / "tried")
    flags = ["--port", str(numbers[0])] + (["--metrics-port", str(numbers[1])] if len(numbers) == 2 else [])
    assert main(["serve", "--dataset-path", str(dataset), "--modality-config-path", str(config), *flags]) == 2
    capsys.readouterr()
    for number in numbers:
        with socket.socket() as next_server:  # no SO_REUSEADDR: a listener left open (or lingering) would refuse it
            next_server.bind(("127.0.0.1", number))
            next_server.listen(1)
