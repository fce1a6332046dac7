"""Deterministic training batches: aspect-ratio grouping, rank sharding, per-sample seeded augmentation.

Everything random is a pure function of (seed, epoch, sample position), so an interrupted run resumed at an epoch
boundary sees exactly the batches an uninterrupted run would, whatever the number of loader threads.
"""
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from solov2.data.train_transforms import collate, train_transform
from solov2.data.transforms import round_up


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
    # dealt evenly, repeating from the start as often as needed (fewer batches than ranks included): every rank
    # then runs the same number of steps, so the collectives match
    batches += [batches[i % len(batches)] for i in range((-len(batches)) % world)]
    return batches[rank::world]


def canvas_buckets(scales: Sequence[Tuple[int, int]], size_divisor: int = 32) -> List[Tuple[int, int]]:
    """The fixed (H, W) batch canvases of bucketed training, smallest area first.

    A keep-ratio resize to scale (long, short) leaves an image within short x long (landscape) or long x short
    (portrait); padded to `size_divisor` that is one canvas per scale and orientation, so at most
    2 x len(scales) shapes, instead of one per distinct batch canvas (16 in 3 epochs of trashcan_mini with the
    6 official TrashCan scales).
    """
    def up(v: int) -> int:
        return round_up(int(v), size_divisor)
    out = set()
    for a, b in scales:
        long, short = max(a, b), min(a, b)
        out |= {(up(short), up(long)), (up(long), up(short))}
    return sorted(out, key=lambda hw: (hw[0] * hw[1], hw))


def pick_canvas(hc: int, wc: int, buckets: Sequence[Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    """Smallest bucket that holds an hc x wc batch canvas; None if none does (then the batch keeps its own)."""
    return next((b for b in buckets if b[0] >= hc and b[1] >= wc), None)


def trim_positives(batch: dict, min_rows: int = 128) -> dict:
    """Cut the padded positive rows to the smallest of min_rows x (1, 2, 4, ...) that holds every real one.

    Few distinct row counts mean few static shapes: every new input shape compiles another train graph (measured
    on CPU: 10-18 s and +1.8 GB of resident memory each, never freed). 128 rows held every trashcan_mini batch
    of 3 epochs at the official scales (at most 120), and the extra rows cost little: they only enter the dynamic
    mask convolution and the dice loss, masked out by pos_valid = 0.
    """
    need = int(batch["pos_valid"].sum(axis=1).max()) if batch["pos_valid"].size else 0
    p = min_rows
    while p < need:
        p *= 2
    for k in ("pos_cell", "pos_mask", "pos_valid"):
        batch[k] = batch[k][:, :p]
    return batch


class TrainLoader:
    """Iterates collated, target-packed batches (see `train_transforms.collate`) for (seed, epoch, rank).

    dataset: random access, items as `solov2.data.coco.CocoDataset`; cfg: `SOLOv2Config`.
    """

    def __init__(self, dataset, cfg, *, seed: int, world: int = 1, rank: int = 0, workers: int = 2,
                 max_pos: int = 512):
        self.dataset, self.cfg, self.seed = dataset, cfg, seed
        self.world, self.rank, self.workers, self.max_pos = world, rank, max(1, workers), max_pos
        self.flags = [int(r["width"] > r["height"]) for r in dataset.records]
        d = cfg.data
        self.buckets = canvas_buckets(d.train_scales, d.size_divisor) if d.canvas_buckets else None

    def batches(self, epoch: int) -> List[List[int]]:
        return epoch_batches(self.flags, self.cfg.data.imgs_per_gpu, self.seed, epoch, self.world, self.rank)

    def __len__(self) -> int:
        return len(self.batches(0))

    def _make(self, epoch: int, pos: int, idxs: List[int]) -> dict:
        d, h = self.cfg.data, self.cfg.head
        samples = []
        for j, i in enumerate(idxs):
            rng = _rng(self.seed, epoch, self.rank, pos, j)
            samples.append(train_transform(self.dataset[i], rng, scales=d.train_scales, flip_ratio=d.flip_ratio,
                                           mean=d.mean, std=d.std, to_rgb=d.to_rgb, size_divisor=d.size_divisor))
        canvas = None
        if self.buckets:
            canvas = pick_canvas(max(s["img"].shape[0] for s in samples), max(s["img"].shape[1] for s in samples),
                                 self.buckets)
        batch = collate(samples, canvas, scale_ranges=h.scale_ranges, num_grids=h.num_grids, sigma=h.sigma,
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
