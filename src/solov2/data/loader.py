"""Deterministic training batches: aspect-ratio grouping, rank sharding, per-sample seeded augmentation.

Everything random is a pure function of (seed, epoch, sample position), so an interrupted run resumed at an epoch
boundary sees exactly the batches an uninterrupted run would, whatever the number of loader threads.
"""
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List, Sequence

import numpy as np

from .train_transforms import collate, train_transform


def _rng(*key: int) -> np.random.RandomState:
    return np.random.RandomState(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


def epoch_batches(flags: Sequence[int], batch_size: int, seed: int, epoch: int, world: int = 1,
                  rank: int = 0) -> List[List[int]]:
    """Batches of dataset indices for one epoch on one rank.

    As the official GroupSampler/DistributedGroupSampler: images are grouped by aspect flag (w > h), each group
    is shuffled and padded with repeats to a multiple of batch_size, so a batch never mixes landscape and
    portrait images (smaller canvas). Batches are shuffled, padded to a multiple of `world` and dealt to ranks.
    """
    rng = _rng(seed, epoch)
    flags = np.asarray(flags)
    batches = []
    for g in np.unique(flags):
        idx = np.flatnonzero(flags == g)
        idx = idx[rng.permutation(len(idx))]
        extra = (-len(idx)) % batch_size
        idx = np.concatenate([idx, idx[rng.randint(0, len(idx), extra)]]) if extra else idx
        batches += [idx[i:i + batch_size].tolist() for i in range(0, len(idx), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    batches += batches[:(-len(batches)) % world]
    return batches[rank::world]


def trim_positives(batch: dict, multiple: int = 32) -> dict:
    """Cut the padded positive rows to the smallest multiple of `multiple` that holds every real one.

    Keeps the number of distinct static shapes (graph compilations) small without dropping any target.
    """
    need = int(batch["pos_valid"].sum(axis=1).max()) if batch["pos_valid"].size else 0
    p = max(multiple, -(-need // multiple) * multiple)
    for k in ("pos_cell", "pos_mask", "pos_valid"):
        batch[k] = batch[k][:, :p]
    return batch


class TrainLoader:
    """Iterates collated, target-packed batches (see `train_transforms.collate`) for (seed, epoch, rank).

    dataset: random access, items as `solov2.data.coco.CocoDataset`; cfg: `SOLOv2Config`.
    """

    def __init__(self, dataset, cfg, seed: int, world: int = 1, rank: int = 0, workers: int = 2,
                 max_pos: int = 512):
        self.dataset, self.cfg, self.seed = dataset, cfg, seed
        self.world, self.rank, self.workers, self.max_pos = world, rank, max(1, workers), max_pos
        self.flags = [int(r["width"] > r["height"]) for r in dataset.records]

    def batches(self, epoch: int) -> List[List[int]]:
        return epoch_batches(self.flags, self.cfg.data.imgs_per_gpu, self.seed, epoch, self.world, self.rank)

    def __len__(self) -> int:
        return len(self.batches(0))

    def _make(self, epoch: int, pos: int, idxs: List[int]) -> dict:
        d, h = self.cfg.data, self.cfg.head
        samples = []
        for j, i in enumerate(idxs):
            rng = _rng(self.seed, epoch, self.rank, pos, j)
            samples.append(train_transform(self.dataset[i], rng, d.train_scales, d.flip_ratio, d.mean, d.std,
                                           d.to_rgb, d.size_divisor))
        batch = collate(samples, scale_ranges=h.scale_ranges, num_grids=h.num_grids, sigma=h.sigma,
                        max_pos=self.max_pos)
        return trim_positives(batch)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """Batches of `epoch` from batch index `start`, built `workers` ahead in threads (cv2/pycocotools
        release the GIL)."""
        todo = list(enumerate(self.batches(epoch)))[start:]
        with ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(self._make, epoch, p, b) for p, b in todo[:self.workers + 1]]
            for k in range(len(todo)):
                nxt = k + self.workers + 1
                if nxt < len(todo):
                    futures.append(pool.submit(self._make, epoch, *todo[nxt]))
                yield futures[k].result()
                futures[k] = None
