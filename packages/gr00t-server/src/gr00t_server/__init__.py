"""gr00t-server: serve GR00T N1.7 policies over ZeroMQ."""

__version__ = "0.1.0"
