"""gr00t-eval against a CURVE server that admits only listed client keys, run without --client-key: the one-line
error names the CLI flag and variable that give a client key, not only the Python argument (audit 11, L4)."""

from __future__ import annotations

import zmq.auth
from serving import running_server

from eval.dataset_factory import make_dataset
from gr00t_client import BasePolicy


class IdlePolicy(BasePolicy):
    """Never reached: the handshake is refused before any request."""

    def _get_action(self, observation, options=None):
        return {}, {}

    def reset(self, options=None):
        return {}


def test_open_loop_without_a_client_key_names_client_key_flag_and_variable(tmp_path, capsys, monkeypatch):
    from gr00t_eval.cli import main

    for name in ("GR00T_CLIENT_KEY", "GR00T_SERVER_PUBLIC_KEY", "GR00T_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "server").mkdir()
    (tmp_path / "authorized").mkdir()
    server_public, server_secret = zmq.auth.create_certificates(str(tmp_path / "server"), "server")
    dataset = make_dataset(tmp_path / "ds", lengths=(6,))
    with running_server(IdlePolicy(strict=False), curve_secret_key=server_secret,
                        authorized_keys=str(tmp_path / "authorized")) as server:
        code = main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--server-public-key",
                     server_public, "--timeout-ms", "5000", "--no-plots", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "refused this client's public key" in err
    assert "(gr00t-eval: --client-key or $GR00T_CLIENT_KEY)" in err, err
