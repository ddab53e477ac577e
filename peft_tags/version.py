"""The version of peft-tags (also in pyproject.toml)."""

__version__ = "0.1.0"
