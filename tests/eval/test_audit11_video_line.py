"""'Video saved to:' is printed only when a video was written (audit11 L1): a rollout stopped before any episode
was scored said it over a folder holding only the stopped episodes' partial files. Real server, real CLI."""

from __future__ import annotations

import os
import signal

from eval.scale_fixtures import ConstantPolicy, policy_server
from gr00t_eval.cli import main


class CtrlCOnFirstCall(ConstantPolicy):
    """Ctrl-C (a real SIGINT to this process) while the first policy call is served: no episode is ever scored."""

    def _get_action(self, observation, options=None):
        os.kill(os.getpid(), signal.SIGINT)
        return super()._get_action(observation, options)


def rollout(port, out, *extra):
    return main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "2", "--n-envs", "1", "--n-action-steps", "4",
                 "--max-episode-steps", "6", "--policy-client-port", str(port), "--vectorization", "sync",
                 "--output-dir", str(out), *extra])


def test_a_run_stopped_before_any_episode_does_not_say_video_saved(tmp_path, capsys):
    with policy_server(CtrlCOnFirstCall()) as server:
        code = rollout(server.port, tmp_path / "out")
    out = capsys.readouterr().out
    assert code == 130
    assert "Video saved to" not in out
    assert f"No episode video was written to {tmp_path / 'out' / 'videos'} (no episode was scored)" in out


def test_max_episodes_rendered_0_says_why_no_video_was_written(tmp_path, capsys):
    with policy_server(ConstantPolicy()) as server:
        code = rollout(server.port, tmp_path / "out", "--max-episodes-rendered", "0")
    out = capsys.readouterr().out
    assert code == 0
    assert "Video saved to" not in out and "(--max-episodes-rendered 0)" in out
