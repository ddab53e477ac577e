"""Train a recipe: accelerate launch run_recipe.py recipes/jd-ner/lora.yaml [key=value ...]

Also works as `python run_recipe.py ...`; the same as `peft-tags train ...`.
"""
import sys

from peft_tags.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
