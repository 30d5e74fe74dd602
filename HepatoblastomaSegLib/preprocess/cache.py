"""Preprocessed training cases cached on disk, so training never recomputes them.

Layout: ``CACHE_DIR/<first 16 hex of plans.preprocessing_hash()>/<case>.image.npy`` (float32 [z, y, x], normalised,
target grid), ``<case>.label.npy`` (uint8 [z, y, x], target grid), with ``with_tissues`` also
``<case>.tissues.npy`` (the phantom's tissue labels, uint8, target grid; for domain randomisation), and
``<case>.json`` (the key, both geometries, warnings). The key is a SHA256 of the plans' preprocessing hash plus,
for the image and each mask (and the tissue map when cached), its path, size and modification time (or, with
``hash_contents=True``, the SHA256 of its bytes, which survives copies and touch). A case is reused only when its
JSON exists and holds the same key; the JSON is written last (after the arrays, each atomically), so an interrupted
write is simply recomputed. Arrays load memory-mapped when asked (``mmap=True``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..io import Geometry, atomic_path, write_text_atomic
from ..progress import NullProgress, Progress
from .dataset import CaseEntry, read_case
from .pipeline import preprocess_image, resample_mask_to_target
from .plans import Plans


@dataclasses.dataclass
class CachedCase:
    """One preprocessed training case: ``image`` float32 and ``label`` uint8, both [z, y, x] on ``target``."""

    case: str
    image: np.ndarray
    label: np.ndarray
    original: Geometry
    target: Geometry
    warnings: list[str]
    tissues: np.ndarray | None = None


def _file_fingerprint(path: Path | None, hash_contents: bool) -> list:
    if path is None:
        return [None]
    path = Path(path)
    if hash_contents:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        return [str(path.resolve()), digest.hexdigest()]
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def preprocess_case(entry: CaseEntry, plans: Plans, *, device: str | torch.device = "cpu", backend: str = "auto",
                    with_tissues: bool = False) -> CachedCase:
    """Preprocess one training case: image as at inference (MRI: Nyul in the manifest's liver + tumour, else body),
    label (tumour, or liver + tumour for a liver model) resampled with nearest neighbour onto the same target grid."""
    data = read_case(entry, plans.modality)
    liver = None
    if plans.modality == "mri" and plans.mri.nyul is not None:
        mask, _ = data.nyul_mask()
        liver = None if mask is None else data.image.with_array(mask.astype(np.uint8))
    prep = preprocess_image(data.image, plans, liver_mask=liver, device=device, backend=backend)
    label = resample_mask_to_target(data.label(plans.label_source).astype(np.uint8), prep)
    warnings = list(prep.warnings)
    if plans.modality == "mri" and plans.mri.nyul is not None and liver is None:
        warnings = [w for w in warnings if "no liver mask" not in w]  # training on body masks is planned, not a fault
    tissues = None
    if with_tissues:
        tissues = np.asarray(resample_mask_to_target(_read_tissues(entry, data.image), prep), dtype=np.uint8)
    return CachedCase(entry.case, prep.numpy(), np.asarray(label, dtype=np.uint8), prep.original, prep.target,
                      warnings, tissues)


def _read_tissues(entry: CaseEntry, image) -> np.ndarray:
    """The case's tissue label map (uint8) on its image's grid; :class:`InputError` naming the file otherwise."""
    from ..errors import InputError
    from ..io import read_volume
    from ..io.volume import require_same_geometry

    if entry.tissues is None:
        raise InputError(f"case {entry.case} has no tissue label map: domain randomisation needs the 'tissues' "
                         "column that 'hbseg phantom' writes", entry.image)
    volume = read_volume(entry.tissues)
    require_same_geometry(image, volume, what_b=f"tissue map of case {entry.case}")
    array = volume.array
    if not np.issubdtype(array.dtype, np.integer) or (array.size and (array.min() < 0 or array.max() > 255)):
        raise InputError("a tissue label map must hold integer labels 0-255", entry.tissues)
    return array.astype(np.uint8, copy=False)


class PreprocessedCache:
    """On-disk cache of :class:`CachedCase` for one plan (see module docstring)."""

    def __init__(self, cache_dir: str | Path, plans: Plans, *, hash_contents: bool = False,
                 with_tissues: bool = False):
        self.plans = plans
        self.with_tissues = bool(with_tissues)
        self.plans_hash = plans.preprocessing_hash()
        self.folder = Path(cache_dir) / self.plans_hash[:16]
        self.hash_contents = hash_contents

    def key(self, entry: CaseEntry) -> str:
        paths = (entry.image, entry.tumor, entry.liver) + ((entry.tissues,) if self.with_tissues else ())
        parts = [self.plans_hash] + [_file_fingerprint(p, self.hash_contents) for p in paths]
        if entry.tumor_values:  # which values of a label map are tumour and liver changes the label
            parts.append([list(entry.tumor_values), list(entry.liver_values)])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def _paths(self, case: str) -> tuple[Path, Path, Path]:
        return (self.folder / f"{case}.image.npy", self.folder / f"{case}.label.npy", self.folder / f"{case}.json")

    def load(self, entry: CaseEntry, *, mmap: bool = False) -> CachedCase | None:
        """The cached case if present and up to date, else None."""
        image_path, label_path, meta_path = self._paths(entry.case)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if meta.get("key") != self.key(entry) or not image_path.is_file() or not label_path.is_file():
            return None
        mode = "r" if mmap else None
        try:
            image = np.load(image_path, mmap_mode=mode, allow_pickle=False)
            label = np.load(label_path, mmap_mode=mode, allow_pickle=False)
            tissues = None
            if self.with_tissues:
                tissues = np.load(self._tissues_path(entry.case), mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return CachedCase(entry.case, image, label, Geometry.from_dict(meta["original"]),
                          Geometry.from_dict(meta["target"]), list(meta.get("warnings", [])), tissues)

    def _tissues_path(self, case: str) -> Path:
        return self.folder / f"{case}.tissues.npy"

    def store(self, entry: CaseEntry, case: CachedCase) -> None:
        image_path, label_path, meta_path = self._paths(entry.case)
        arrays = [(image_path, case.image), (label_path, case.label)]
        if case.tissues is not None:
            arrays.append((self._tissues_path(entry.case), case.tissues))
        for path, array in arrays:
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        meta = {"case": entry.case, "key": self.key(entry), "plans_hash": self.plans_hash,
                "original": case.original.to_dict(), "target": case.target.to_dict(), "warnings": case.warnings,
                "image": str(entry.image), "tumor": str(entry.tumor),
                "liver": None if entry.liver is None else str(entry.liver)}
        write_text_atomic(meta_path, json.dumps(meta, indent=1) + "\n")

    def get(self, entry: CaseEntry, *, device: str | torch.device = "cpu", mmap: bool = False) -> CachedCase:
        """The cached case, computing and storing it first when missing or stale."""
        cached = self.load(entry, mmap=mmap)
        if cached is not None:
            return cached
        case = preprocess_case(entry, self.plans, device=device, with_tissues=self.with_tissues)
        self.store(entry, case)
        return self.load(entry, mmap=mmap) if mmap else case

    def build(self, entries: Sequence[CaseEntry], *, device: str | torch.device = "cpu",
              progress: Progress | None = None, workers: int = 1) -> list[str]:
        """Make sure every case is cached; returns the names of the cases that had to be (re)computed.

        ``workers`` > 1: the missing cases are computed in that many processes on the CPU, each with an equal share
        of the cores (MRI's N4 dominates and ITK spreads one N4 over 16 cores poorly; nnU-Net's ``-np`` does the
        same). One worker computes on ``device``. The cached arrays are the same either way for CT; for MRI, N4's
        result can differ in the last bits with the thread count.
        """
        progress = progress or NullProgress()
        todo = [entry for entry in entries if self.load(entry, mmap=True) is None]
        total = max(len(entries), 1)
        done = len(entries) - len(todo)
        if workers <= 1 or len(todo) <= 1:
            for entry in todo:
                progress("preprocess cache", done / total, entry.case)
                self.store(entry, preprocess_case(entry, self.plans, device=device, with_tissues=self.with_tissues))
                done += 1
        else:
            import multiprocessing
            import os
            from concurrent.futures import ProcessPoolExecutor, as_completed

            workers = min(int(workers), len(todo))
            threads = max(1, (os.cpu_count() or 1) // workers)
            # fork where the platform has it, as torch's DataLoader does: no "if __name__ == '__main__'" needed in a
            # user's script, no re-import per worker. The workers never touch CUDA, so a CUDA context in the parent
            # is harmless.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [pool.submit(_compute_and_store, self, entry, threads) for entry in todo]
                for future in as_completed(futures):
                    case = future.result()  # a worker's error (naming its file) is raised here
                    done += 1
                    progress("preprocess cache", done / total, case)
        progress("preprocess cache", 1.0, f"{len(entries)} cases")
        return [entry.case for entry in todo]


def _compute_and_store(cache: PreprocessedCache, entry: CaseEntry, threads: int) -> str:
    """One case in a preprocessing worker process (CPU, ``threads`` threads for torch and ITK)."""
    import SimpleITK as sitk

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    cache.store(entry, preprocess_case(entry, cache.plans, device="cpu", with_tissues=cache.with_tissues))
    return entry.case
