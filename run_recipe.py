"""Train a recipe: accelerate launch run_recipe.py recipes/jd-ner/lora.yaml [key=value ...]

Also works as `python run_recipe.py ...`; the same as `peft-tags train ...`. Several processes:
`torchrun --nproc_per_node N run_recipe.py ...` or `accelerate launch --multi_gpu --num_processes N
run_recipe.py ...` (on CPUs where there are no GPUs; docs/recipes.md).
"""
import sys

from peft_tags.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
