"""Preprocessing: plans from a training set, resampling to and from the target grid, CT window, MRI N4 + Nyul.

The API other stages build on (inference, training, the CLI, the Slicer module)::

    from HepatoblastomaSegLib.preprocess import (Plans, plan_dataset, preprocess_image, resample_to_original,
                                                 labels_on_original, check_modality, pad_to_size, crop_padding)

    plans = plan_dataset("phantoms/", "ct", gpu_memory_gb=8, z_spacing_rule="median")   # -> Plans
    plans.save("plans.json"); plans = Plans.load("plans.json")      # readable JSON, validated field by field
    plans = Plans.from_dict(d); d = plans.to_dict()

    prep = preprocess_image(volume, plans, liver_mask=None, liver_model=None, device="cuda", backend="auto")
    prep.data        # float32 torch.Tensor [z, y, x] on `device`: normalised, on the target grid
    prep.original    # Geometry of the input (outputs must land here exactly)
    prep.target      # Geometry of the target grid (same extent and direction, the plan's spacing)
    prep.warnings    # list[str] for the output summary (e.g. MRI without a liver mask)

    x, pad = pad_to_size(prep.data, plans.patch_size_zyx)          # smaller than the patch: padded, not refused
    probs = crop_padding(softmax_of_network_output, pad)           # [C, z, y, x] on prep.target
    probs_orig = resample_to_original(probs, prep)                  # float32 [C, z, y, x] on prep.original
    labels = labels_on_original(probs, prep)                        # uint8 [z, y, x] argmax on prep.original

    check_modality(volume, "ct")   # InputError: "... Is it an MRI given to a CT model?"
    check_spacing(volume)          # InputError outside [0.1, 10] mm

    cache = PreprocessedCache("cache/", plans)                      # training: computed once, then read from disk
    case = cache.get(entry)        # entry from read_manifest(dataset_dir); case.image float32, case.label uint8

Resampling runs on ``device`` with the torch path (separable GEMMs, exact cubic B-spline); ``backend="sitk"`` uses
the SimpleITK reference instead (CPU, 5-9x slower, tested to agree). MRI: ``liver_mask`` (a binary Volume on the
image grid) or ``liver_model`` (a liver bundle) gives the Nyul mask; with neither, the body is used and
``prep.warnings`` says so.

The network and the model bundle live beside this package: ``HepatoblastomaSegLib.network.build_network(plans,
width=1.0, deep_supervision=False)``, ``HepatoblastomaSegLib.bundle.load_bundle(name_or_dir, modality=None)`` ->
``ModelBundle`` (``.plans``, ``.labels``, ``.build_network(device)``), ``save_bundle(folder, state_dict, plans, *,
name, version, modality, card_markdown, labels=None, width=1.0, fp16=False)`` and ``model_card(...)``.

Conventions: arrays are SimpleITK's [z, y, x]; spacings are ``*_mm_xyz`` (x, y, z) like ``Geometry``; patch, kernels,
strides and shapes are ``*_zyx``, the order of the arrays and of the tensors the network sees ([B, C, z, y, x]).
Where the paper and nnU-Net v1.7.1 differ, the module docstrings say what we chose and why: target spacing
(:mod:`.planning`), topology (:mod:`.topology`), resampling orders (:mod:`.resample`), intensity (:mod:`.intensity`,
:mod:`.nyul`, :mod:`.n4`), liver mask (:mod:`.liver`).
"""

from .cache import CachedCase, PreprocessedCache, preprocess_case
from .checks import check_modality, check_spacing
from .dataset import CaseEntry, read_manifest
from .padding import Padding, crop_padding, pad_to_size
from .pipeline import (
    PreprocessedImage,
    labels_on_original,
    preprocess_image,
    resample_mask_to_target,
    resample_to_original,
)
from .planning import choose_target_spacing, plan_dataset
from .plans import Plans
from .resample import resample_array, target_geometry
from .topology import Topology, plan_topology

__all__ = [
    "CachedCase", "CaseEntry", "Padding", "Plans", "PreprocessedCache", "PreprocessedImage", "Topology",
    "check_modality", "check_spacing", "choose_target_spacing", "crop_padding", "labels_on_original", "pad_to_size",
    "plan_dataset", "plan_topology", "preprocess_case", "preprocess_image", "read_manifest", "resample_array",
    "resample_mask_to_target", "resample_to_original", "target_geometry",
]
