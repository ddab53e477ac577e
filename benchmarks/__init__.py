"""Benchmarks of peft-tags: the grid harness and single studies, run from the repository root.

    python -m benchmarks.harness --budget cpu          # the grid of benchmarks/grid.yaml
    python -m benchmarks.report RESULTS/<budget>/<task> # its reports again, from the cells
    python -m benchmarks.stock_recipe --out DIR         # the stock Hugging Face recipe alone
    python -m benchmarks.stock_vs_ours                  # stock recipe against a peft-tags recipe
    python -m benchmarks.span_vs_multilabel ...         # span tagger against tag classifiers
    python -m benchmarks.methods_table RUN_DIR ...      # a table of finished runs

Modules: :mod:`.grid` (the grid file and its cells), :mod:`.cells` (one cell's command,
fingerprint and result), :mod:`.harness` (running the cells), :mod:`.report` (tables and plot),
:mod:`.provenance` (commit, packages, hardware). Results and what is current:
``benchmarks/results/README.md``. peft_tags is imported as the installed package.
"""
