"""iclab: in-context learning of transformers on synthetic tasks."""

__version__ = "0.1.0"
