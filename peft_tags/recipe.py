"""The public recipe API (:mod:`peft_tags.config` holds the code): load, validate, dump and find
recipes. ``from peft_tags.recipe import load_recipe`` keeps working for scripts that use it."""
from .config import *  # noqa: F401,F403
from .config import __all__  # noqa: F401
