"""What the module runs on, as text for a bug report: Slicer, Python, torch, CUDA, the GPU and its memory,
MONAI and the other packages, the library and the models. Also which device a run should use.

:func:`collect` imports torch, which takes seconds and which 3D Slicer's own process may not have yet, so the GUI
runs this file as a script in a background process (:func:`probe_command`; it prints one JSON object) and reads
the answer with :func:`parse_probe_output`. Only the standard library is imported at the top, so the file runs as a
script with nothing but the library's folder on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Distributions reported, in order: (label, distribution name).
PACKAGES = (("MONAI", "monai"), ("numpy", "numpy"), ("SimpleITK", "SimpleITK"), ("scipy", "scipy"),
            ("safetensors", "safetensors"), ("tqdm", "tqdm"), ("pydicom", "pydicom"), ("VTK", "vtk"))
NOT_INSTALLED = "not installed"


def package_version(distribution: str) -> str:
    """The installed version of a distribution, or :data:`NOT_INSTALLED`."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def probe_torch() -> dict[str, Any]:
    """torch's version, its CUDA build, and the GPUs it sees (name, memory in GB)."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - missing, or a broken install (report it, do not crash)
        return {"torch": NOT_INSTALLED, "torch_error": f"{type(exc).__name__}: {exc}", "cuda_available": False,
                "cuda_version": None, "gpus": []}
    gpus = []
    available = bool(torch.cuda.is_available())
    if available:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"name": props.name, "memory_gb": round(props.total_memory / 1e9, 1),
                         "capability": f"{props.major}.{props.minor}"})
    return {"torch": torch.__version__, "cuda_available": available, "cuda_version": torch.version.cuda,
            "gpus": gpus}


def collect(*, slicer_version: str | None = None, models: Sequence[Any] = (), include_torch: bool = True
            ) -> dict[str, Any]:
    """Everything :func:`diagnostics_text` prints, as a JSON-ready dict. ``models``: catalogue entries (with
    ``name``, ``version``, ``modality``, ``source``, ``sha256``) or dicts."""
    info: dict[str, Any] = {"slicer": slicer_version or "not running in 3D Slicer",
                            "python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import HepatoblastomaSegLib

        info["library"] = f"{HepatoblastomaSegLib.__version__} ({Path(HepatoblastomaSegLib.__file__).parent})"
    except Exception as exc:  # noqa: BLE001
        info["library"] = f"cannot import HepatoblastomaSegLib: {exc}"
    if include_torch:
        info.update(probe_torch())
    else:
        info["torch"] = package_version("torch")
    info["packages"] = {label: package_version(dist) for label, dist in PACKAGES}
    info["models"] = [model_summary(m) for m in models]
    return info


def model_summary(model: Any) -> dict[str, str]:
    """A catalogue entry (or a dict) as the strings the report shows."""
    if isinstance(model, Mapping):
        return {k: str(v) for k, v in model.items()}
    return {"name": model.name, "version": model.version, "modality": model.modality, "source": model.source,
            "sha256": model.sha256[:12]}


def diagnostics_text(info: Mapping[str, Any]) -> str:
    """The report as aligned ``label: value`` lines (what "copy to clipboard" copies)."""
    rows: list[tuple[str, str]] = [("3D Slicer", str(info.get("slicer", ""))), ("Python", str(info.get("python", ""))),
                                   ("Platform", str(info.get("platform", ""))),
                                   ("HepatoblastomaSeg library", str(info.get("library", ""))),
                                   ("torch", str(info.get("torch", NOT_INSTALLED)))]
    if info.get("torch_error"):
        rows.append(("torch error", str(info["torch_error"])))
    if "cuda_available" in info:
        rows.append(("CUDA (torch build)", str(info.get("cuda_version") or "none (CPU-only build)")))
        rows.append(("CUDA available", "yes" if info.get("cuda_available") else "no"))
        gpus = info.get("gpus") or []
        for index, gpu in enumerate(gpus):
            rows.append((f"GPU {index}", f"{gpu.get('name')}, {gpu.get('memory_gb')} GB, compute "
                                         f"capability {gpu.get('capability', '?')}"))
        if not gpus:
            rows.append(("GPU", "none found"))
    for label, version in (info.get("packages") or {}).items():
        rows.append((label, str(version)))
    models = info.get("models") or []
    for model in models:
        rows.append((f"model {model.get('name')}", f"{model.get('version')} ({model.get('modality')}, "
                                                     f"{model.get('source')}, sha256 {model.get('sha256')}...)"))
    if not models:
        rows.append(("models", "none found"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)} : {value}" for label, value in rows) + "\n"


# ------------------------------------------------------------------------------------------------ devices
@dataclasses.dataclass(frozen=True)
class DeviceChoice:
    """Where a run goes: ``device`` is the ``hbseg --device`` value ("cpu" / "cuda"), or None when it cannot run
    as asked; ``message`` says why (empty when there is nothing to say); ``level``: info, warning or error."""

    device: str | None
    message: str
    level: str = "info"


def device_summary(probe: Mapping[str, Any]) -> str:
    """One line for the GUI: what torch found."""
    torch_version = probe.get("torch", NOT_INSTALLED)
    if torch_version == NOT_INSTALLED:
        return "torch is not installed yet (it comes with the PyTorch extension, installed at the first run)"
    gpus = probe.get("gpus") or []
    if probe.get("cuda_available") and gpus:
        gpu = gpus[0]
        more = f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
        cuda = probe.get("cuda_version")
        return f"GPU: {gpu['name']}, {gpu['memory_gb']} GB{more}; torch {torch_version}, CUDA {cuda}"
    build = probe.get("cuda_version")
    why = "a CPU-only torch build" if not build else f"torch built for CUDA {build}, but no usable NVIDIA GPU/driver"
    return f"CPU only: {why} (torch {torch_version})"


def choose_device(requested: str, probe: Mapping[str, Any] | None, needed_gb: float | None = None) -> DeviceChoice:
    """The device for a run. ``requested``: "Auto", "GPU" or "CPU" (the GUI's choices); ``probe``: what
    :func:`probe_torch` found (None: not known yet: Auto then lets the library decide); ``needed_gb``: the model's
    estimated need (:func:`~.models.estimate_inference_memory_gb`)."""
    requested = requested.lower()
    if requested == "cpu":
        return DeviceChoice("cpu", "")
    if probe is None:
        return DeviceChoice("auto" if requested == "auto" else "cuda", "")
    gpus = probe.get("gpus") or []
    has_gpu = bool(probe.get("cuda_available")) and bool(gpus)
    if not has_gpu:
        if requested == "gpu":
            return DeviceChoice(None, f"GPU was chosen, but {device_summary(probe)}. Choose Auto or CPU (slower), "
                                      "or install a CUDA build of torch from the PyTorch Utils module.", "error")
        return DeviceChoice("cpu", "No CUDA GPU found: running on the CPU (slower).")
    memory = float(gpus[0].get("memory_gb") or 0.0)
    if needed_gb is not None and memory < needed_gb:
        text = f"GPU has {memory:.0f} GB, the model needs about {needed_gb:.0f} GB"
        if requested == "auto":
            return DeviceChoice("cpu", f"{text}: running on the CPU (slower).", "warning")
        return DeviceChoice("cuda", f"{text}: it may run out of memory (the run then retries with smaller batches "
                                    "and finally on the CPU). Choose CPU to skip that.", "warning")
    return DeviceChoice("cuda", "")


# ------------------------------------------------------------------------------------------------ probe process
def probe_command(python_executable: str | Path, library_dir: str | Path, *, models_json: str = "[]",
                  slicer_version: str | None = None) -> list[str]:
    """Run this file as a script in another Python (e.g. ``PythonSlicer``): it prints :func:`collect` as JSON."""
    args = [str(python_executable), str(Path(__file__).resolve()), "--library-dir", str(library_dir),
            "--models-json", models_json]
    if slicer_version:
        args += ["--slicer-version", slicer_version]
    return args


def parse_probe_output(lines: Sequence[str] | str) -> dict[str, Any]:
    """The dict a probe printed (its last JSON object line); ValueError when there is none."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    for line in reversed(list(lines)):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict) and "python" in data:
                return data
    raise ValueError("the diagnostics probe printed no result")


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    # Run as a script, this file's folder is sys.path[0]; its module names (process, storage, ...) must not shadow
    # anything torch or MONAI import.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve().as_posix() != Path(here).as_posix()]
    parser = argparse.ArgumentParser(description="print the HepatoblastomaSeg diagnostics as one JSON line")
    parser.add_argument("--library-dir", help="folder holding HepatoblastomaSegLib/")
    parser.add_argument("--models-json", default="[]", help="catalogue entries to report, as a JSON list")
    parser.add_argument("--slicer-version")
    args = parser.parse_args(argv)
    if args.library_dir:
        sys.path.insert(0, args.library_dir)
    info = collect(slicer_version=args.slicer_version, models=json.loads(args.models_json))
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
