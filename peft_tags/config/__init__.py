"""Recipes: the schema of a run, one generic validator, YAML with positions, overrides, discovery.

- :mod:`.schema`: the sections as dataclasses (the method's and the task's options come from
  their own modules, :mod:`peft_tags.methods` and :mod:`peft_tags.tasks`);
- :mod:`.validate`: :func:`~.validate.build` checks a mapping against a dataclass and reports
  every problem at once (also used by the benchmark grid);
- :mod:`.yamlio`: the capped YAML loader and the line of each key;
- :mod:`.overrides`: ``key.sub=value`` overrides and the order and place (file, line) of the problem lines;
- :mod:`.load`: :func:`load_recipe` (a recipe's ``base:`` files merged in), :func:`dump_recipe` and friends;
- :mod:`.discovery`: recipes by name under ``recipes/``.

Importing this package loads no torch. Checking a recipe imports peft (and with it torch) only
when the method's options come from a peft config class (:mod:`peft_tags.methods.options`).
"""
from .discovery import ERROR_MARK, REPO_RECIPES, list_recipes, resolve_recipe_path
from .load import dump_recipe, load_recipe, recipe_from_dict, recipe_mapping, recipe_to_dict
from .schema import SECTIONS, BackboneSection, DataSection, MethodSection, OutputSection, Recipe, TrainingSection
from .validate import RecipeError
from .yamlio import YamlTooBig, yaml_load

__all__ = ["ERROR_MARK", "REPO_RECIPES", "SECTIONS", "BackboneSection", "DataSection", "MethodSection", "OutputSection",
           "Recipe", "RecipeError", "TrainingSection", "YamlTooBig", "dump_recipe", "list_recipes", "load_recipe",
           "recipe_from_dict", "recipe_mapping", "recipe_to_dict", "resolve_recipe_path", "yaml_load"]
