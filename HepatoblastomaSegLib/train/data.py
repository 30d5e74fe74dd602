"""Training patches from the preprocessed cache: which case, where, which augmentation (CPU side).

Each sample is decided by a generator seeded with ``(seed, epoch, iteration, position in the global batch)``, so the
data are the same whatever the number of DataLoader workers or DDP ranks and a resumed run sees exactly what an
uninterrupted run would have seen. The DataLoader workers only crop: they read the source region the sample needs
from the memory-mapped cache (the patch itself, or the bounding box of the rotated / scaled / deformed patch) and
draw the augmentation parameters (:func:`.augment.draw_params`). All interpolation and intensity work happens later
on the training device (:func:`.augment.augment_batch`), because on a GPU that is where it is cheap.

Sampling (nnU-Net v1 ``DataLoader3D``, with the foreground share stated by the task):

- a case is drawn uniformly;
- exactly ``foreground_fraction`` of the samples (by global sample number: with 1/3, every third sample) take a
  random foreground voxel of a random foreground class present in a random case that has one, and centre the patch
  on it, moved inward where the patch would leave the image (nnU-Net clamps the same way), so the voxel is always
  inside the patch; the others are placed uniformly where the patch fits (images smaller than the patch are padded);
- outside the image the image is padded with 0 (the foreground mean after normalisation, as at inference) and the
  label with background.

Foreground locations: up to 10,000 voxels per class and case, chosen with a generator seeded by the case name
(nnU-Net keeps 10,000 too), computed once when the dataset is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..preprocess import CaseEntry, PreprocessedCache
from .augment import SampleParams, draw_params, source_box
from .config import AugmentConfig

MAX_LOCATIONS_PER_CLASS = 10_000


@dataclasses.dataclass
class BatchLayout:
    """How one global batch is split over DDP ranks (nnU-Net v2: the global batch is divided, remainder first)."""

    global_batch: int
    local_batch: int
    offset: int

    @classmethod
    def for_rank(cls, global_batch: int, rank: int, world_size: int) -> BatchLayout:
        global_batch = max(int(global_batch), int(world_size))  # every rank needs at least one sample
        base, extra = divmod(global_batch, world_size)
        local = base + (1 if rank < extra else 0)
        offset = rank * base + min(rank, extra)
        return cls(global_batch, local, offset)


def is_foreground_sample(global_index: int, fraction: float) -> bool:
    """Whether global sample ``global_index`` is forced to hold foreground: exactly ``fraction`` of any long run."""
    return math.floor((global_index + 1) * fraction + 1e-9) > math.floor(global_index * fraction + 1e-9)


def _case_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def foreground_locations(label: np.ndarray, num_classes: int, case: str) -> dict[int, np.ndarray]:
    """{class: int64 [n, 3] (z, y, x)} for each foreground class present, at most 10,000 per class."""
    rng = np.random.default_rng(_case_seed(case))
    out = {}
    for cls in range(1, num_classes):
        flat = np.flatnonzero(np.asarray(label).ravel() == cls)
        if flat.size == 0:
            continue
        if flat.size > MAX_LOCATIONS_PER_CLASS:
            flat = np.sort(rng.choice(flat, MAX_LOCATIONS_PER_CLASS, replace=False))
        out[cls] = np.stack(np.unravel_index(flat, label.shape), axis=1).astype(np.int64)
    return out


def crop_padded(array: np.ndarray, lo: Sequence[int], hi: Sequence[int], value: float = 0) -> np.ndarray:
    """``array[lo:hi]`` (3D, end exclusive) with ``value`` outside the array; reads only the overlapping part."""
    shape = [int(h) - int(l) for l, h in zip(lo, hi)]
    out = np.full(shape, value, dtype=array.dtype)
    src = tuple(slice(max(int(l), 0), min(int(h), s)) for l, h, s in zip(lo, hi, array.shape))
    if all(s.stop > s.start for s in src):
        dst = tuple(slice(s.start - int(l), s.stop - int(l)) for s, l in zip(src, lo))
        out[dst] = array[src]
    return out


@dataclasses.dataclass
class Sample:
    """What a worker hands over: the source crop, where the patch sits in it, and the augmentation parameters."""

    image: torch.Tensor          # float32 [1, sz, sy, sx] source region
    label: torch.Tensor          # uint8 [1, sz, sy, sx]
    params: SampleParams
    case: str
    foreground: bool
    elastic: torch.Tensor | None = None  # params.elastic as a tensor, so that it is pinned and copied asynchronously
    tissues: torch.Tensor | None = None  # uint8 [1, sz, sy, sx] tissue labels, for domain randomisation only

    def pin_memory(self) -> Sample:
        """Called by the DataLoader's pin-memory thread (page-locked memory makes the copy to a GPU asynchronous)."""
        return dataclasses.replace(self, image=self.image.pin_memory(), label=self.label.pin_memory(),
                                   elastic=None if self.elastic is None else self.elastic.pin_memory(),
                                   tissues=None if self.tissues is None else self.tissues.pin_memory())


class TrainPatches(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``(epoch, i)`` with i < ``iters_per_epoch * local_batch`` (see module doc)."""

    def __init__(self, cache: PreprocessedCache, entries: Sequence[CaseEntry], *, patch_size_zyx: Sequence[int],
                 num_classes: int, spacing_mm_zyx: Sequence[float], iters_per_epoch: int, layout: BatchLayout,
                 seed: int, foreground_fraction: float = 1 / 3, augment: AugmentConfig | None = None,
                 in_plane_rotation_only: bool = False, hu_per_unit: float | None = None):
        self.cache = cache
        self.entries = list(entries)
        self.patch = tuple(int(v) for v in patch_size_zyx)
        self.num_classes = int(num_classes)
        self.spacing = tuple(float(v) for v in spacing_mm_zyx)
        self.iters_per_epoch = int(iters_per_epoch)
        self.layout = layout
        self.seed = int(seed)
        self.foreground_fraction = float(foreground_fraction)
        self.augment = augment or AugmentConfig()
        self.in_plane_rotation_only = bool(in_plane_rotation_only)
        self.hu_per_unit = hu_per_unit
        self.shapes: list[tuple[int, int, int]] = []
        self.locations: list[dict[int, np.ndarray]] = []
        for entry in self.entries:
            case = self._load(entry)
            self.shapes.append(tuple(int(v) for v in case.image.shape))
            if case.label.shape != case.image.shape:
                raise InputError(f"cached label {case.label.shape} and image {case.image.shape} of case "
                                 f"{entry.case} differ (a stale cache? delete it)", cache.folder)
            self.locations.append(foreground_locations(case.label, self.num_classes, entry.case))
        self.with_foreground = [i for i, loc in enumerate(self.locations) if loc]
        if not self.with_foreground:
            raise InputError(f"none of the {len(self.entries)} training cases has a foreground voxel after "
                             "preprocessing: nothing to learn", cache.folder)
        self._open: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}

    def _load(self, entry: CaseEntry):
        case = self.cache.load(entry, mmap=True)
        if case is None:
            raise InputError(f"case {entry.case} is missing from the preprocessing cache (build it first)",
                             self.cache.folder)
        return case

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image, label) of case ``index``, memory-mapped, opened once per process."""
        return self._arrays(index)[:2]

    def _arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if index not in self._open:
            case = self._load(self.entries[index])
            self._open[index] = (case.image, case.label, case.tissues)
        return self._open[index]

    def __getstate__(self):  # worker processes open their own memory maps
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    def __len__(self) -> int:
        return self.iters_per_epoch * self.layout.local_batch

    def global_index(self, epoch: int, i: int) -> tuple[int, int, int]:
        """(iteration, position in the global batch, global sample number) of local sample ``i`` of ``epoch``."""
        iteration, j = divmod(int(i), self.layout.local_batch)
        position = self.layout.offset + j
        number = (int(epoch) * self.iters_per_epoch + iteration) * self.layout.global_batch + position
        return iteration, position, number

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, i = key
        iteration, position, number = self.global_index(epoch, i)
        rng = np.random.default_rng([self.seed, int(epoch), iteration, position])
        foreground = self.foreground_fraction > 0 and is_foreground_sample(number, self.foreground_fraction)
        if foreground:
            index = int(self.with_foreground[rng.integers(len(self.with_foreground))])
        else:
            index = int(rng.integers(len(self.entries)))
        shape = np.asarray(self.shapes[index])
        patch = np.asarray(self.patch)
        lo_start = np.minimum(0, shape - patch)
        hi_start = np.maximum(0, shape - patch)
        if foreground:
            classes = sorted(self.locations[index])
            locations = self.locations[index][classes[int(rng.integers(len(classes)))]]
            voxel = locations[int(rng.integers(len(locations)))]
            start = np.clip(voxel - patch // 2, lo_start, hi_start)
        else:
            start = np.array([rng.integers(lo, hi + 1) for lo, hi in zip(lo_start, hi_start)])
        params = draw_params(rng, self.augment, self.patch, self.spacing,
                             in_plane_rotation_only=self.in_plane_rotation_only, hu_per_unit=self.hu_per_unit)
        centre = start + (patch - 1) / 2.0
        lo, hi = source_box(params, centre, self.patch)
        image, label, tissues = self._arrays(index)
        src_image = crop_padded(image, lo, hi, 0.0).astype(np.float32, copy=False)
        src_label = crop_padded(label, lo, hi, 0).astype(np.uint8, copy=False)
        src_tissues = None
        if params.synthetic_seed is not None:
            if tissues is None:
                raise InputError(f"case {self.entries[index].case} has no cached tissue map for domain "
                                 "randomisation (a stale cache? delete it)", self.cache.folder)
            src_tissues = torch.from_numpy(np.ascontiguousarray(crop_padded(tissues, lo, hi, 0)))[None]
        params.centre_in_source = tuple(float(c - l) for c, l in zip(centre, lo))
        return Sample(torch.from_numpy(np.ascontiguousarray(src_image))[None],
                      torch.from_numpy(np.ascontiguousarray(src_label))[None], params,
                      self.entries[index].case, bool(foreground),
                      None if params.elastic is None else torch.from_numpy(params.elastic), src_tissues)


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, i)`` for the current epoch; the epoch travels in the index, so persistent workers see it."""

    def __init__(self, length: int):
        self.length = int(length)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in range(self.length)])

    def __len__(self) -> int:
        return self.length


def collate_samples(samples: list[Sample]) -> list[Sample]:
    """Keep samples apart: their source crops differ in size; the device stacks them after resampling."""
    return samples


def make_loader(dataset: TrainPatches, *, workers: int, pin_memory: bool) -> tuple[torch.utils.data.DataLoader,
                                                                                  EpochSampler]:
    """A DataLoader over one epoch of ``dataset`` (batches of ``layout.local_batch`` samples) and its sampler."""
    sampler = EpochSampler(len(dataset))
    kwargs = {}
    if workers > 0:
        kwargs = {"persistent_workers": True, "prefetch_factor": 4}
    loader = torch.utils.data.DataLoader(dataset, batch_size=dataset.layout.local_batch, sampler=sampler,
                                         num_workers=workers, collate_fn=collate_samples, pin_memory=pin_memory,
                                         drop_last=False, **kwargs)
    return loader, sampler
