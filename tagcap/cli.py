"""Console entry point; the commands themselves live in ``tagcap.pipeline.cli``."""

from tagcap.pipeline.cli import main

__all__ = ["main"]
