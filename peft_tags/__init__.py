"""peft-tags: parameter-efficient fine-tuning for e-commerce product tagging.

``Tagger.load(output_dir).tag(titles)`` tags titles with a trained output directory;
``load_recipe(path)`` reads a recipe. Both are imported on first use (torch is heavy).
"""

import logging as _logging

from .version import __version__

# bitsandbytes warns on import that an optional kernel package is missing; its CPU path works
# without it, and the line would stand out in every run's log
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
__all__ = ["Tagger", "load_recipe", "__version__"]


def __getattr__(name):
    if name == "Tagger":
        from .predict import Tagger

        return Tagger
    if name == "load_recipe":
        from .config import load_recipe

        return load_recipe
    raise AttributeError(f"module 'peft_tags' has no attribute {name!r}")
