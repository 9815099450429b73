"""`gr00t-server serve --clip-outliers/--no-clip-outliers` and `--preprocess-device` reach Gr00tPolicy."""

import pytest

from gr00t_client.embodiment import EmbodimentTag
from gr00t_server import cli


def serve_args(*extra):
    return cli.build_parser().parse_args(["serve", "--model-path", "unused", *extra])


@pytest.mark.parametrize("flags,expected", [((), None), (("--clip-outliers",), True), (("--no-clip-outliers",), False),
                                            (("--no_clip_outliers",), False)])
def test_clip_outliers_flag_is_three_valued(flags, expected):
    assert serve_args(*flags).clip_outliers is expected


def test_preprocess_device_defaults_to_the_policy_choice():
    assert serve_args().preprocess_device is None
    assert serve_args("--preprocess-device", "cpu").preprocess_device == "cpu"


def test_serve_builds_the_policy_with_the_flags(tiny_checkpoint):
    args = serve_args("--no-clip-outliers", "--preprocess-device", "cpu", "--device", "cpu", "--no-warmup")
    args.model_path = str(tiny_checkpoint)
    policy = cli._model_policy(args, EmbodimentTag.resolve("libero_sim"))
    assert policy.processor.config.clip_outliers is False
    assert str(policy.preprocess_device) == "cpu"
