"""gr00t-eval: open-loop and closed-loop evaluation of GR00T policy servers."""

__version__ = "0.1.0"
