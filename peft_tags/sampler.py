"""The order of training batches: shuffled, length-bucketed, and reproducible on resume."""
from __future__ import annotations

import math

import numpy as np
import torch


class LengthBucketBatches(torch.utils.data.Sampler):
    """Shuffled batches of titles of similar length: less padding, same randomness per epoch.

    Titles are shuffled, cut into pools of 50 batches, each pool is sorted by length and cut
    into batches, and the batches are shuffled. The order depends only on (seed, epoch).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucketing: bool):
        self.lengths, self.batch_size, self.seed, self.bucketing = lengths, batch_size, seed, bucketing
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        idx = rng.permutation(len(self.lengths))
        if self.bucketing:
            pool = self.batch_size * 50
            idx = np.concatenate([sorted(idx[i : i + pool], key=lambda j: self.lengths[j]) for i in range(0, len(idx), pool)])
        batches = [idx[i : i + self.batch_size].tolist() for i in range(0, len(idx), self.batch_size)]
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        # the short batch stays last: accelerate's sharding over processes assumes full batches
        return [batches[i] for i in rng.permutation(len(batches))] + short

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def fenced_batches(loader):
    """Iterate ``loader`` without touching the global torch RNG.

    A DataLoader draws a seed from the global RNG whenever an iterator starts. A resumed run
    starts its iterator mid-epoch, after restoring the RNG, so the draw would shift every
    dropout mask after it; with the draws fenced off, resume matches an uninterrupted run.
    """
    it = iter(loader)
    while True:
        with torch.random.fork_rng(devices=[]):
            batch = next(it, None)
        if batch is None:
            return
        yield batch
