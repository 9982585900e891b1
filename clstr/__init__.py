"""clstr: run shell commands in parallel on many machines over ssh."""

__version__ = "0.2.0"
