"""Rank recipe variants on a lent GPU machine (``docs/experiments.md``, "Seed spread").

A GPU call carries at most 64 MiB from the checkout and the datasets do not travel, so
:mod:`.prep` writes a reduced copy into a git-ignored folder: the Kaggle Training scans and the
tcga-lgg scans at 192 px, grey JPEG quality 55 (the training augmentation already re-encodes at
quality 25-95), Testing and the external development set likewise for scoring only, and the
ImageNet weights of ``--arch`` in float16, in one stored zip. ``run.sh`` trains the variants of a
jobs file in parallel with ``python -m train --no-finalize`` and :mod:`.score` scores them
(network alone, plain pass, with each card's input size and head crop). The figures rank
variants and measure seed spread; a recipe is kept only after a full CPU run on the original data.

A jobs file holds one run a line, ``NAME`` then the options that differ from the shipped recipe
(``python -m train``'s defaults), e.g. ``seed1 --seed 1``. The call:
``bash benchmarks/experiments/gpu_rank/run.sh JOBS_FILE`` with ``data/gpu`` carried.
"""
