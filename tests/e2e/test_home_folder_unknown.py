"""A leading '~' in a path flag with $HOME unset and no passwd entry for the user (`env -i`, a cron job or systemd unit
run as an arbitrary UID): one usage line naming the flag and the unset $HOME (exit 2), never pathlib's traceback and
never a folder named '~' made in the working folder."""

import os
import pwd
import shutil
import subprocess
import sys

import pytest

from gr00t_client import cli_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = os.pathsep.join(os.path.join(REPO, "packages", package, "src")
                          for package in ("gr00t-client", "gr00t-server", "gr00t-eval"))
UID_WITHOUT_ENTRY = 54321


def _no_home_anywhere(monkeypatch):
    """$HOME unset and no passwd entry for this uid, as where Path.expanduser raises 'Could not determine home'."""
    monkeypatch.delenv("HOME", raising=False)

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)


@pytest.mark.parametrize("path", ["~", "~/ckpt", "~/keys/server"])
def test_a_tilde_with_no_home_folder_is_refused_naming_home_and_the_uid(monkeypatch, path):
    _no_home_anywhere(monkeypatch)
    with pytest.raises(RuntimeError):  # what pathlib does there: the traceback users saw
        __import__("pathlib").Path(path).expanduser()
    with pytest.raises(cli_flags.HomeFolderUnknownError,
                       match=r"\$HOME is unset and uid \d+ has no passwd entry; set HOME or"):
        cli_flags.home_expanded_path(path)


def test_a_path_flag_refuses_the_tilde_as_a_usage_error(monkeypatch):
    import argparse

    _no_home_anywhere(monkeypatch)
    with pytest.raises(argparse.ArgumentTypeError, match="cannot expand '~' in '~/ckpt'"):
        cli_flags.user_path("~/ckpt")


def test_paths_without_a_leading_tilde_and_a_known_home_are_unchanged(monkeypatch):
    monkeypatch.setenv("HOME", "/home/robot")
    assert cli_flags.home_expanded_path("~/ckpt") == "/home/robot/ckpt"
    _no_home_anywhere(monkeypatch)
    for path in ("/abs/ckpt", "rel/ckpt", "./~/ckpt", "nvidia/GR00T-N1.7-3B", "a~b"):
        assert cli_flags.home_expanded_path(path) == path


def test_a_key_given_as_a_tilde_path_with_no_home_folder_names_its_flag_or_variable(monkeypatch, tmp_path):
    """The key flags (--server-public-key, --client-key, --curve-secret-key, $GR00T_AUTHORIZED_KEYS) said only
    "cannot expand '~' in '~/keys/...'", naming no flag."""
    from gr00t_client.curve import load_public_key
    from gr00t_server.curve import CurveServerConfig, generate_certificates

    _, secret = generate_certificates(tmp_path)
    _no_home_anywhere(monkeypatch)
    with pytest.raises(cli_flags.HomeFolderUnknownError, match=r"^--server-public-key: cannot expand '~'"):
        load_public_key("~/keys/server.key", "--server-public-key")
    with pytest.raises(cli_flags.HomeFolderUnknownError, match=r"^--curve-secret-key: cannot expand '~'"):
        CurveServerConfig.load("~/keys/server.key_secret", names=("--curve-secret-key", "--authorized-keys"))
    with pytest.raises(cli_flags.HomeFolderUnknownError, match=r"^--authorized-keys: cannot expand '~'"):
        CurveServerConfig.load(secret, "~/clients", names=("--curve-secret-key", "--authorized-keys"))


def _can_run_as_uid_without_entry():
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    try:
        pwd.getpwuid(UID_WITHOUT_ENTRY)
    except KeyError:
        return True
    return False


@pytest.mark.skipif(not _can_run_as_uid_without_entry(), reason="needs root and setpriv to run as a uid with no "
                    "passwd entry (the unit tests above cover the helper)")
@pytest.mark.parametrize("words, flag", [
    (["keygen", "~/keys"], "DIR"),
    (["serve", "--model-path", "~/ckpt", "--device", "cpu", "--port", "1"], "--model-path"),
    (["make-test-checkpoint", "~/ckpt"], "OUTPUT"),
], ids=["keygen", "serve", "make-test-checkpoint"])
def test_gr00t_server_refuses_a_tilde_with_home_unset_in_one_line(tmp_path, words, flag):
    os.chmod(tmp_path, 0o777)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": SOURCES}  # env -i: no HOME
    run = subprocess.run(["setpriv", f"--reuid={UID_WITHOUT_ENTRY}", f"--regid={UID_WITHOUT_ENTRY}", "--clear-groups",
                          sys.executable, "-m", "gr00t_server.cli", *words], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    text = run.stdout + run.stderr
    assert run.returncode == 2, text
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    assert f"argument {flag}" in last and "$HOME is unset" in last and f"uid {UID_WITHOUT_ENTRY}" in last, last
    assert os.listdir(tmp_path) == []  # no ./~/ckpt or ./~/keys


@pytest.mark.skipif(not _can_run_as_uid_without_entry(), reason="needs root and setpriv to run as a uid with no "
                    "passwd entry")
def test_gr00t_eval_refuses_a_tilde_with_home_unset_in_one_line(tmp_path):
    os.chmod(tmp_path, 0o777)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": SOURCES}
    run = subprocess.run(["setpriv", f"--reuid={UID_WITHOUT_ENTRY}", f"--regid={UID_WITHOUT_ENTRY}", "--clear-groups",
                          sys.executable, "-m", "gr00t_eval.cli", "rollout", "--resume", "~/run"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    text = run.stdout + run.stderr
    assert run.returncode == 2 and "Traceback" not in text, text
    assert "argument --resume" in text and "$HOME is unset" in text, text


def test_a_batch_jobs_tilde_video_dir_with_no_home_folder_is_that_jobs_error(monkeypatch, tmp_path):
    import json

    from gr00t_eval.batch_jobs import JobError, load_jobs

    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([{"name": "reach", "env_name": "metaworld/reach-v3",
                                 "policy_server": {"host": "127.0.0.1", "port": 5555},
                                 "overrides": {"video_dir": "~/videos"}}]))
    _no_home_anywhere(monkeypatch)
    [job] = load_jobs(jobs, tmp_path)
    assert isinstance(job, JobError) and "job 'reach': video_dir: cannot expand '~'" in str(job), job
