"""Segment a cohort with the HepatoblastomaSeg module's logic, in 3D Slicer without a window or headless.

    Slicer --no-main-window --python-script HepatoblastomaSeg/Scripts/segment_cohort.py --manifest cohort.csv --out DIR
    python HepatoblastomaSeg/Scripts/segment_cohort.py --manifest cohort.csv --out DIR     (slicer-core installed)

The manifest is a CSV with columns ``case,image`` and optionally ``modality`` (ct/mri) and annotator mask columns
(``R1,R2,R3``...; any column named R<number>, or those named with ``--annotators``); relative paths are relative to
the CSV's folder. Per case, in ``DIR/<case>/``: ``<case>.seg.nrrd`` (segment "Hepatoblastoma" on the image's exact
grid), ``<case>_entropy.nrrd`` (float32, nats), ``<case>_metrics.tsv`` (+ .schema.tsv; with annotators, one row per
annotator and their consensus), with annotators ``<case>_consensus.seg.nrrd`` and ``<case>_agreement.tsv``, and
last ``<case>_done.json`` (checksums of the others, and what they were computed from). The cases run through the
library's cohort runner (:func:`HepatoblastomaSegLib.infer.cohort.run_cohort`, as ``hbseg segment --manifest``):
a re-run skips a case whose files match their checksums and whose image, annotator masks and options are unchanged,
a failing case is reported and the run goes on (exit status 1 at the end), one run at a time writes into ``DIR``,
and every file is written atomically. With annotator columns the run ends with the Evaluation module's cohort
report in ``DIR/report/``.

For tests and other callers: ``main(argv, predict=...)`` takes a ``Callable[[Volume], Prediction]`` instead of
loading a model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import textwrap
import time
import traceback
from pathlib import Path

_MODULE_DIR = Path(__file__).resolve().parent.parent  # HepatoblastomaSeg/: holds the HepatoblastomaSegMRML package
#: The folder holding HepatoblastomaSegLib: the module folder in an installed extension, the repository root in a
#: source checkout. Both go first on sys.path, so this copy of the library is used even where another is installed.
_LIBRARY_DIR = next((folder for folder in (_MODULE_DIR, _MODULE_DIR.parent)
                     if (folder / "HepatoblastomaSegLib" / "__init__.py").is_file()), _MODULE_DIR)
for _folder in (str(_MODULE_DIR), str(_LIBRARY_DIR)):
    if _folder in sys.path:
        sys.path.remove(_folder)
    sys.path.insert(0, _folder)

try:  # under Slicer --python-script an exception here would leave Slicer running: see run() and finish()
    import vtk

    import HepatoblastomaSegMRML as mrml
    from HepatoblastomaSegLib.errors import HepatoblastomaSegError, InputError
    from HepatoblastomaSegLib.infer import cohort as library_cohort
    from HepatoblastomaSegLib.infer.outputs import input_sha256, sha256_of
    from HepatoblastomaSegLib.io import read_volume, write_text_atomic
    from HepatoblastomaSegLib.io.tables import read_csv_rows
    from HepatoblastomaSegLib.progress import Progress
except Exception as _exc:  # noqa: BLE001 - reported by run() with exit status 2
    if __name__ != "__main__":
        raise
    _IMPORT_FAILURE: BaseException | None = _exc
else:
    _IMPORT_FAILURE = None
#: The library classes this script refines (the cohort runner's per-case outputs, its progress); when the imports
#: above failed, stand-in bases, so that this file still loads and :func:`run` reports the failure with a status.
_CaseOutputs, _Progress = ((object, object) if _IMPORT_FAILURE is not None
                           else (library_cohort.CaseOutputs, Progress))

MODALITIES = ("ct", "mri")
_ANNOTATOR_COLUMN = re.compile(r"^R\d+$")
DONE_SUFFIX = "_done.json"
STATUS_NAME = "cohort_status.tsv"
COHORT_METRICS_NAME = "cohort_metrics.tsv"
EVALUATION_CSV_NAME = "evaluation_cohort.csv"
REPORT_FOLDER = "report"
AI_SOURCE = "AI"

DESCRIPTION = ("Segment hepatoblastoma in every case of a manifest with the HepatoblastomaSeg module's logic (the "
               "model is loaded once), score the masks against the annotators' masks and their majority-vote "
               "consensus, and end with the Evaluation module's cohort report. Runs inside 3D Slicer "
               "(Slicer --no-main-window --python-script ...) or with plain Python and the slicer-core wheel.")

EPILOG = textwrap.dedent("""\
    outputs in OUT/<case>/ (each on the image's exact voxel grid; written atomically):
      <case>.seg.nrrd            tumour segmentation, one segment "Hepatoblastoma" (3D Slicer segmentation file)
      <case>_entropy.nrrd        voxelwise softmax entropy, float32, nats (0 .. ln 2 = 0.693)
      <case>_metrics.tsv         volume (mL), largest diameter (mm), entropy inside/core/boundary (nats), model,
                                 device, time (s); with annotators also Dice and volume error (%) per annotator
      <case>_consensus.seg.nrrd  majority vote of the annotators, and <case>_agreement.tsv (pairwise Dice)
      <case>_done.json           written last: the checksums of the files above
    and in OUT/: cohort_status.tsv (done/skipped/failed per case), cohort_summary.csv (the library's cohort table:
    volume, entropy, review flag per case), cohort_metrics.tsv, report/ (annotators only)

    manifest example (paths relative to the CSV's folder; modality and R1,R2,... columns are optional):
      case,image,modality,R1,R2,R3
      hb001,hb001/ct.nii.gz,ct,hb001/R1.nii.gz,hb001/R2.nii.gz,hb001/R3.seg.nrrd

    examples:
      Slicer --no-main-window --python-script segment_cohort.py --manifest cohort.csv --out results/ --model ct-demo
      python segment_cohort.py --manifest cohort.csv --out results/ --model bundles/ct --device cuda --no-tta

    Re-run the same command to resume: finished cases (verified checksums; same image, annotators and options) are
    skipped. A failing case is reported and the others go on; the exit status is then 1 (also after an unexpected
    error, with its traceback; 2: bad arguments, manifest or model, torch/MONAI not installed, or another run
    writing into OUT; 130: interrupted). Inside 3D Slicer every ending closes the application with that status.
    Without matplotlib the report has no figures (a warning says so).""")


@dataclasses.dataclass(frozen=True)
class Case:
    case: str
    image: Path
    modality: str | None
    annotators: dict[str, Path]  # column -> mask file (empty cells left out)

    def cohort_case(self) -> library_cohort.CohortCase:
        return library_cohort.CohortCase(self.case, self.image, self.modality)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segment_cohort.py", description=textwrap.fill(DESCRIPTION, 100, break_on_hyphens=False),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True, help="cohort CSV: case,image[,modality][,R1,R2,...]")
    parser.add_argument("--out", type=Path, required=True, help="output folder (one subfolder per case)")
    parser.add_argument("--model", help="model bundle folder or bundled model name (loaded once for the cohort)")
    parser.add_argument("--modality", choices=MODALITIES, help="modality of cases whose manifest row names none")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the network runs (default: %(default)s)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="8-flip test-time augmentation (default: on; about 8x the network time)")
    parser.add_argument("--annotators", default="",
                        help="comma-separated annotator mask columns (default: every column named R<number>)")
    parser.add_argument("--no-report", action="store_true", help="skip the Evaluation module's cohort report")
    parser.add_argument("--no-figures", action="store_true", help="cohort report without figures (faster)")
    return parser


def read_manifest(path: Path, annotator_columns: list[str] | None = None) -> list[Case]:
    """Parse the manifest: its cases by the library's rules (:func:`HepatoblastomaSegLib.infer.cohort.read_manifest`)
    and their annotator columns; errors name the file, the row and the problem."""
    cohort_cases = library_cohort.read_manifest(path)
    header, rows = read_csv_rows(path, "manifest")
    if annotator_columns:
        absent = [c for c in annotator_columns if c not in header]
        if absent:
            raise InputError(f"annotator column(s) {', '.join(absent)} not in the manifest", path)
    else:
        annotator_columns = [h for h in header if _ANNOTATOR_COLUMN.match(h)]
    annotators: dict[str, dict[str, Path]] = {}
    for _, row in rows:
        values = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        annotators[values.get("case", "")] = {c: _resolve(path, values[c]) for c in annotator_columns
                                              if values.get(c)}
    return [Case(c.case, c.image, c.modality, annotators.get(c.case, {})) for c in cohort_cases]


def _resolve(manifest: Path, text: str) -> Path:
    return Path(text) if Path(text).is_absolute() else manifest.parent / text


def make_predictor(model: str | None, *, modality: str | None = None, device: str = "auto", tta: bool = True):
    """The predictor, loaded once for the whole cohort: ``Callable[[Volume], Prediction]``.

    The one place where the library's in-process predictor is wired in: ``model`` is a bundle folder or a bundled
    model's name (None: the bundled default for ``modality``), loaded and checked by
    :meth:`HepatoblastomaSegLib.infer.predictor.Predictor.from_options`, as ``hbseg segment`` does.
    """
    from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
    from HepatoblastomaSegLib.progress import NullProgress

    predictor = Predictor.from_options(PredictorOptions(model=model, modality=modality, device=device, tta=tta))

    def predict(volume):
        return predictor.predict(volume, NullProgress())

    return predict


# --- one case ---------------------------------------------------------------------------------------------------

def case_folder(out_dir: Path, case: Case) -> Path:
    return out_dir / case.case  # the library's cohort runner: one folder per case id (ids are checked names)


def done_path(out_dir: Path, case: Case) -> Path:
    return case_folder(out_dir, case) / f"{mrml.storage.file_stem(case.case)}{DONE_SUFFIX}"


def output_files(out_dir: Path, case: Case) -> list[Path]:
    """Every file the script writes for ``case`` (module docstring)."""
    paths = mrml.storage.result_paths(case_folder(out_dir, case), case.case)
    stem, folder = mrml.storage.file_stem(case.case), case_folder(out_dir, case)
    tables = [paths["metrics"], folder / f"{stem}_agreement.tsv"]
    return [paths["segmentation"], paths["entropy"], *tables, *(t.with_suffix(".schema.tsv") for t in tables),
            folder / f"{stem}_consensus.seg.nrrd", done_path(out_dir, case)]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def is_done(out_dir: Path, case: Case) -> bool:
    """True when the case's done file exists and every file it lists has the recorded checksum."""
    return _done_record(done_path(out_dir, case)) is not None


def _done_record(marker: Path) -> dict | None:
    """The done file when every file it lists has the recorded checksum; None otherwise."""
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        files = record["files"]
        if all(sha256_of(marker.parent / name) == digest for name, digest in files.items()):
            return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def load_image(scene, path: Path, name: str):
    """The case image as a volume node on the file's exact voxel grid.

    Read by the library (files and DICOM series folders), not by Slicer's volume storage node: that one reverses
    the k axis of a left-handed image, and the outputs must line up voxel for voxel with the input file (the
    cohort report compares them array to array). Outputs are written through storage nodes, which keep the grid.
    """
    volume = read_volume(path)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    mrml.volumes.set_node_geometry(node, volume.geometry)
    mrml.volumes.set_volume_array(node, volume.array)
    node.CreateDefaultDisplayNodes()
    return node


class SlicerCaseOutputs(_CaseOutputs):
    """A case's files written through MRML (module docstring), for the library's cohort runner: the prediction
    becomes the module's result nodes, is scored against the case's annotators and their consensus, and is saved
    by storage nodes; the done file, written last, records the files' checksums and the resume key (image,
    options, and the annotator masks' checksums). What a case adds to the scene is removed after it (:meth:`done`).
    """

    def __init__(self, scene, cases: list[Case], predict, default_modality: str | None):
        super().__init__(fmt="nrrd")
        self.scene, self.predict_volume, self.default_modality = scene, predict, default_modality
        self.cases = {case.case: case for case in cases}
        self._results: dict[str, object] = {}
        self._before: tuple[set[str], set[int]] | None = None
        self._started = 0.0

    def _key(self, case: Case, key: dict) -> dict:
        return {**key, "annotators": {c: input_sha256(p) for c, p in sorted(case.annotators.items())}}

    def why_recompute(self, cohort_case, case_dir: Path, key: dict) -> str | None:
        case = self.cases[cohort_case.case]
        marker = done_path(case_dir.parent, case)
        if not marker.exists():
            return "no earlier result"
        record = _done_record(marker)
        if record is None:
            return "the earlier result is incomplete or its files changed"
        if record.get("resume_key") != self._key(case, key):
            return "the image, an annotator's mask or the options changed since the earlier result"
        return None

    def finished_summary(self, cohort_case, case_dir: Path) -> dict:
        record = _done_record(done_path(case_dir.parent, self.cases[cohort_case.case]))
        return dict((record or {}).get("summary") or {})

    def check(self, cohort_case, case_dir: Path) -> None:
        """Refuse, before the network runs, a case folder that is a file or whose files would overwrite one of the
        case's inputs (its image or an annotator's mask)."""
        if case_dir.exists() and not case_dir.is_dir():
            raise InputError("the case's output must be a folder, but this is an existing file", case_dir)
        case = self.cases[cohort_case.case]
        for target in output_files(case_dir.parent, case):
            for source in (case.image, *case.annotators.values()):
                if _same_file(target, source):
                    raise InputError(f"writing the output {target.name} would overwrite the input {source}; choose "
                                     "another output folder", case_dir)

    def predict(self, cohort_case, progress) -> object:
        """The library's ``predict(case, progress)``: the image as a volume node on the file's exact grid,
        segmented in this process (:func:`HepatoblastomaSegMRML.segment`)."""
        case = self.cases[cohort_case.case]
        self._before, self._started = _scene_contents(self.scene), time.perf_counter()
        volume_node = load_image(self.scene, case.image, case.case)
        captured = []

        def predict(volume):
            captured.append(self.predict_volume(volume))
            return captured[-1]

        result = mrml.segment(self.scene, volume_node, predict, case=case.case,
                              modality=case.modality or self.default_modality)
        self._results[case.case] = result
        return dataclasses.replace(captured[-1], summary=result.summary)

    def write(self, cohort_case, prediction, case_dir: Path, key: dict) -> dict:
        case = self.cases[cohort_case.case]
        marker = done_path(case_dir.parent, case)
        if marker.exists():
            marker.unlink()  # the case stops counting as finished before any of its files changes
        result = self._results.pop(case.case)
        files = _score_and_save(self.scene, case, result, case_dir)
        listed = dict(files)
        for kind in ("metrics", "agreement"):  # a table's column types live in its .schema.tsv
            if kind in files:
                listed[f"{kind}_schema"] = files[kind].with_name(files[kind].name.replace(".tsv", ".schema.tsv"))
        record = {"case": case.case, "image": str(case.image),
                  "annotators": {k: str(v) for k, v in case.annotators.items()}, "summary": result.summary,
                  "files": {p.name: sha256_of(p) for p in listed.values()}, "resume_key": self._key(case, key)}
        write_text_atomic(marker, json.dumps(record, indent=2, default=str) + "\n")
        return result.summary

    def done(self, row: dict, index: int, total: int) -> str:
        """After each case: remove what it added to the scene, print its line; returns its status for the
        cohort_status.tsv ("done", "skipped" or "failed")."""
        self._results.pop(row["case"], None)
        if self._before is not None:
            _restore_scene(self.scene, self._before)
            self._before = None
        prefix = f"[{index}/{total}] {row['case']}"
        if row["status"] == library_cohort.SKIPPED:
            print(f"{prefix}: finished before, skipped", flush=True)
            return "skipped"
        if row["status"] == "failed":  # the cohort runner logged "<case>: FAILED: <error>" on stderr
            return "failed"
        print(f"{prefix}: done in {time.perf_counter() - self._started:.1f} s", flush=True)
        return "done"


def _score_and_save(scene, case: Case, result, folder: Path) -> dict[str, Path]:
    """Load the case's annotators, score the result against them and their consensus, save the files."""
    stem = mrml.storage.file_stem(case.case)
    references, consensus = [], None
    for column, path in case.annotators.items():
        try:
            node, segment_id = mrml.load_mask(scene, path, result.volume_node, name=f"{case.case} {column}")
        except HepatoblastomaSegError as exc:
            raise type(exc)(f"annotator {column}: {exc.problem}", exc.path) from exc
        node.SetName(column)
        references.append((node, segment_id))
    if len(references) >= 2:
        consensus = mrml.consensus(scene, references, volume_node=result.volume_node, name="Consensus")
        references.append((consensus.segmentation_node, consensus.segment_id))
    if references:
        mrml.rescore(scene, result, references, case=case.case)
    files = mrml.save_results(result, folder, case=case.case, include_ai=False)
    if consensus is not None:
        files["consensus"] = mrml.save_node(consensus.segmentation_node, folder / f"{stem}_consensus.seg.nrrd")
        files["agreement"] = mrml.save_node(consensus.table_node, folder / f"{stem}_agreement.tsv")
    return files


class _StderrLog(_Progress):
    """The cohort runner's log lines (a failed case, why a case is recomputed) on stderr; no progress bar."""

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


def _scene_contents(scene) -> tuple[set[str], set[int]]:
    """IDs of the scene's nodes and subject hierarchy items (to remove what one case adds, and only that)."""
    node_ids = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    sh = mrml.nodes.hierarchy(scene)
    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    return node_ids, {items.GetId(i) for i in range(items.GetNumberOfIds())}


def _restore_scene(scene, before: tuple[set[str], set[int]]) -> None:
    """Remove the nodes, then the (folder) subject hierarchy items, added since ``before``."""
    node_ids, item_ids = before
    for node in [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]:
        if node is not None and node.GetID() not in node_ids and not node.GetSingletonTag():
            scene.RemoveNode(node)
    sh = mrml.nodes.hierarchy(scene)
    _, items_now = _scene_contents(scene)
    for item in sorted(items_now - item_ids, reverse=True):  # folders made later (inside others) first
        if sh.GetItemName(item):
            sh.RemoveItem(item, False, False)


# --- the cohort --------------------------------------------------------------------------------------------------

def write_status(out_dir: Path, rows: list[dict]) -> Path:
    lines = ["case\tstatus\tmessage"] + [f"{r['case']}\t{r['status']}\t{r['message']}" for r in rows]
    return write_text_atomic(out_dir / STATUS_NAME, "\n".join(lines) + "\n")


def write_cohort_metrics(scene, out_dir: Path, cases: list[Case]) -> Path | None:
    """All finished cases' metrics rows in one table ``DIR/cohort_metrics.tsv`` (read back from their files)."""
    rows = []
    for case in cases:
        if not is_done(out_dir, case):
            continue
        stem = mrml.storage.file_stem(case.case)
        table = mrml.load_table(scene, case_folder(out_dir, case) / f"{stem}_metrics.tsv")
        rows += mrml.table_rows(table)
        mrml.remove_node(scene, table)
    if not rows:
        return None
    table = mrml.nodes.add_table_node(scene, "cohort metrics", mrml.METRICS_COLUMNS, rows, role="metrics")
    try:
        return mrml.save_node(table, out_dir / COHORT_METRICS_NAME)
    finally:
        mrml.remove_node(scene, table)


def cohort_report(out_dir: Path, cases: list[Case], *, figures: bool = True) -> Path | None:
    """The Evaluation module's cohort report (``DIR/report/``) of the finished cases that have 2+ annotators: the
    annotators, their consensus Rc and this run's masks ("AI", with its entropy maps), by
    :mod:`HepatoblastomaSegLib.evaluate`. Returns the report's HTML file, or None when no case qualifies."""
    from HepatoblastomaSegLib.evaluate.cohort import EvaluationOptions, evaluate_cohort, read_cohort
    from HepatoblastomaSegLib.evaluate.report import write_report

    columns = sorted({c for case in cases for c in case.annotators}, key=lambda c: (len(c), c))
    ready = [c for c in cases if is_done(out_dir, c) and len(c.annotators) >= 2]
    if len(columns) < 2 or not ready:
        return None
    header = ["case", *columns, AI_SOURCE, f"{AI_SOURCE}_entropy"]
    lines = [",".join(header)]
    for case in ready:
        stem, folder = mrml.storage.file_stem(case.case), case_folder(out_dir, case)
        cells = [case.case, *(str(case.annotators.get(c, "")) for c in columns),
                 str(folder / f"{stem}.seg.nrrd"), str(folder / f"{stem}_entropy.nrrd")]
        lines.append(",".join(_csv_cell(c) for c in cells))
    cohort_csv = write_text_atomic(out_dir / EVALUATION_CSV_NAME, "\n".join(lines) + "\n")
    cohort = read_cohort(cohort_csv, ",".join(columns), AI_SOURCE, f"{AI_SOURCE}={AI_SOURCE}_entropy")
    result = evaluate_cohort(cohort, EvaluationOptions(skip_missing=True))
    return write_report(result, out_dir / REPORT_FOLDER, figures=figures)["report.html"]


def _matplotlib_or_warning() -> bool:
    """Whether the report can have figures: matplotlib draws them, and 3D Slicer does not ship it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("segment_cohort: warning: matplotlib is not installed, so the cohort report has no figures (in 3D "
              "Slicer's Python console: slicer.util.pip_install('matplotlib'))", file=sys.stderr, flush=True)
        return False
    return True


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def main(argv: list[str] | None = None, predict=None) -> int:
    """Run the cohort; returns the exit status (0 all done, 1 some case failed, 2 bad arguments, manifest or model,
    130 interrupted); unexpected errors propagate (:func:`run` turns them into a status). ``predict`` replaces the
    model (tests, other callers)."""
    args = build_parser().parse_args(argv)
    try:
        annotators = [c.strip() for c in args.annotators.split(",") if c.strip()] or None
        cases = read_manifest(args.manifest, annotators)
        if predict is None:
            modalities = {case.modality for case in cases if case.modality}
            modality = args.modality or (modalities.pop() if len(modalities) == 1 else None)
            predict = make_predictor(args.model, modality=modality, device=args.device, tta=args.tta)
    except HepatoblastomaSegError as exc:
        print(f"segment_cohort: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # torch or MONAI not installed (yet)
        print(f"segment_cohort: error: the model cannot be loaded: {_describe(exc)}. In 3D Slicer, open the "
              "Hepatoblastoma Segmentation module once and segment a volume: it installs PyTorch and MONAI",
              file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. a damaged weights file that torch or safetensors refuses
        print(f"segment_cohort: error: the model cannot be loaded: {_describe(exc)}", file=sys.stderr)
        return 2
    env = mrml.application_environment() if mrml.in_application() else mrml.headless_environment()
    scene = env.scene
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"segment_cohort: error: {args.out}: cannot make the output folder ({exc.strerror or exc})",
              file=sys.stderr)
        return 2
    outputs = SlicerCaseOutputs(scene, cases, predict, args.modality)
    status: list[dict] = []

    def case_done(row: dict) -> None:
        state = outputs.done(row, len(status) + 1, len(cases))
        status.append({"case": row["case"], "status": state, "message": str(row.get("error", "")).replace("\t", " ")})

    options = library_cohort.result_options({"model": args.model, "modality": args.modality, "tta": args.tta},
                                            "slicer-nrrd")
    try:
        library_cohort.run_cohort([case.cohort_case() for case in cases], args.out, outputs.predict,
                                  progress=_StderrLog(), on_case_done=case_done, options=options, outputs=outputs)
    except KeyboardInterrupt:
        print("segment_cohort: interrupted; finished cases are kept, nothing half-written was left; run the same "
              "command again to resume", file=sys.stderr)
        write_status(args.out, status)
        return 130
    except HepatoblastomaSegError as exc:  # e.g. another run is writing into the folder
        print(f"segment_cohort: error: {exc}", file=sys.stderr)
        return 2
    write_status(args.out, status)
    write_cohort_metrics(scene, args.out, cases)
    if not args.no_report and any(case.annotators for case in cases):
        figures = not args.no_figures and _matplotlib_or_warning()
        try:
            report = cohort_report(args.out, cases, figures=figures)
            if report is not None:
                print(f"cohort report: {report}", flush=True)
        except Exception as exc:  # noqa: BLE001 - the cases are done; say why the report is not
            if not isinstance(exc, HepatoblastomaSegError):
                traceback.print_exc(file=sys.stderr)
            reason = exc if isinstance(exc, HepatoblastomaSegError) else _describe(exc)
            print(f"segment_cohort: cohort report failed: {reason}", file=sys.stderr)
            return 1
    failed = [r["case"] for r in status if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} case(s) failed: {', '.join(failed)} (see {args.out / STATUS_NAME})", file=sys.stderr)
    return 1 if failed else 0


def run(argv: list[str] | None = None, predict=None) -> int:
    """:func:`main` with every way out turned into an exit status and a message on stderr: 0 all done, 1 some case
    failed or an unexpected error (traceback printed), 2 bad arguments, manifest or model, or a missing Python
    package, 130 interrupted. Never raises, so :func:`finish` always runs."""
    try:
        unsupported = _unsupported_reason()
        if unsupported:
            print(f"segment_cohort: error: {unsupported}", file=sys.stderr)
            return 2
        if _IMPORT_FAILURE is not None:
            print(f"segment_cohort: error: cannot import the module's code ({_describe(_IMPORT_FAILURE)}); run it "
                  "with 3D Slicer (Slicer --no-main-window --python-script ...) or a Python with slicer-core",
                  file=sys.stderr)
            return 2
        return main(argv, predict=predict)
    except SystemExit as exc:  # argparse: --help (0) or bad arguments (2, its message already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except KeyboardInterrupt:
        print("segment_cohort: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # noqa: BLE001 - the one place that must end every run with a status
        traceback.print_exc(file=sys.stderr)
        print(f"segment_cohort: error: {_describe(exc)}", file=sys.stderr)
        return 1


def _unsupported_reason() -> str:
    """The module's message for a 3D Slicer (or Python) older than it supports; "" otherwise. compatibility.py is
    loaded by its path: it runs on Python 3.9, where the packages that import it cannot be imported."""
    import importlib.util

    path = _MODULE_DIR / "HepatoblastomaSegRunner" / "compatibility.py"
    spec = importlib.util.spec_from_file_location("hbseg_compatibility", path)
    compatibility = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compatibility)
    app = getattr(sys.modules.get("slicer"), "app", None)
    version = None
    if app is not None and hasattr(app, "majorVersion"):
        version = (int(app.majorVersion), int(app.minorVersion))
    return compatibility.unsupported_reason(version)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"the Python package '{exc.name.split('.')[0]}' is not installed"
    return f"{type(exc).__name__}: {exc}"


def finish(code: int) -> None:
    """End the program with ``code``. Inside 3D Slicer ``--python-script`` ends the application only with ``-c`` or
    ``--testing``, so ``slicer.util.exit`` is called (a window-less Slicer would otherwise run on forever)."""
    slicer_module = sys.modules.get("slicer")
    if slicer_module is not None and hasattr(slicer_module, "app"):
        slicer_module.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    finish(run(sys.argv[1:]))
