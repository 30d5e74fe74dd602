"""3D Slicer module: segment hepatoblastoma on CT / T2 MRI, show uncertainty, review, re-score, build a consensus.

Only the Qt-facing parts live here. Behaviour is in Qt-free, tested code: the library ``HepatoblastomaSegLib``
(shipped inside this module's folder), the MRML glue ``HepatoblastomaSegMRML`` (result nodes, re-scoring,
consensus, uncertain regions, the background job of one click) and ``HepatoblastomaSegRunner``, which needs
neither Qt nor MRML (background processes and the warm worker, model catalogue, diagnostics, dependency rules,
failure explanations, supported versions). "Segment tumor" sends the
request to a warm ``hbseg serve --stdio`` worker (a background ``PythonSlicer`` process kept alive between clicks,
restarted after a crash), so Slicer stays responsive and the model loads once.

Nothing heavy is imported when Slicer loads the module: torch and MONAI are checked for, and installed after
asking, when the user first segments.
"""

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4 (unsupported: the panel then says so, see _supportProblem)
    def _(text):
        return text

    def translate(context, text):
        return text


def _libraryFolder() -> Path:
    """The folder that holds ``HepatoblastomaSegLib``: this module's folder in an installed extension (CMake copies
    the library there), the repository root when the module is loaded from a source checkout."""
    here = Path(__file__).resolve().parent
    for folder in (here, here.parent):
        if (folder / "HepatoblastomaSegLib" / "__init__.py").is_file():
            return folder
    return here


if str(_libraryFolder()) not in sys.path:
    sys.path.append(str(_libraryFolder()))


def _supportProblem() -> str:
    """``""`` on a supported 3D Slicer (5.10 or later), else the message the panel shows instead of a traceback.

    ``HepatoblastomaSegRunner/compatibility.py`` is loaded by its path: importing the package would first run its
    ``__init__``, which imports code that needs Python 3.10."""
    import importlib.util

    path = Path(__file__).resolve().parent / "HepatoblastomaSegRunner" / "compatibility.py"
    spec = importlib.util.spec_from_file_location("HepatoblastomaSegCompatibility", path)
    compatibility = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compatibility)
    version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion)) if hasattr(slicer, "app") else None
    return compatibility.unsupported_reason(version)

PAPER = ("Modanwal G, Kumar S, Viswanathan V, et al. Pediatric Personalized Deep Learning Models for Segmentation of "
         "Hepatoblastoma at CT and MRI. Radiol Imaging Cancer 2026;8(2):e250041. doi:10.1148/rycan.250041")
#: GUI choices -> the library's values.
MODALITY_CHOICES = {"CT": "ct", "T2 MRI": "mri"}
DEVICE_CHOICES = ("Auto", "GPU", "CPU")
IMPORT_MODEL_ITEM = "__import__"
POLL_INTERVAL_MS = 150
RESCORE_DELAY_S = 1.5


class HepatoblastomaSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Hepatoblastoma Segmentation")
        # Slicer translates category names in this context (its module template does the same).
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []  # PyTorchUtils (PyTorch extension) is imported when first needed
        self.parent.contributors = ["HepatoblastomaSeg developers"]
        self.parent.helpText = _(
            "Segments hepatoblastoma on contrast-enhanced CT and T2-weighted MRI with a 3D U-Net (nnU-Net topology), "
            "shows the model's voxelwise uncertainty (softmax entropy), finds the most uncertain parts of the tumour "
            "boundary, and scores your edits against the AI mask, an annotator or a consensus of annotators.<br>"
            "Research software: not for clinical use. The bundled demo models were trained on synthetic phantoms "
            "only.<br>Needs 3D Slicer 5.10 or later (Python 3.12); on older versions the panel says so.<br>See <a href=\"https://github.com/HepatoblastomaSeg/HepatoblastomaSeg\">the project page</a>.")
        self.parent.acknowledgementText = _(
            f"The method follows {PAPER}. Built on 3D Slicer, PyTorch, MONAI and SimpleITK.")


@parameterNodeWrapper
class HepatoblastomaSegParameterNode:
    """The module's settings, saved with the scene.

    inputVolume: the CT or T2 MRI to segment. modality / modelPath / device / tta / liverAnchor: how (liverAnchor off:
    keep CT tumour found away from the liver mask; on: the library's default). entropyOpacity: of the
    uncertainty overlay. resultSegmentation: the result under review; referenceSegmentation: an annotator or
    consensus to score it against; autoRescore: re-score after each edit.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modality: Annotated[str, Choice(list(MODALITY_CHOICES))] = "CT"
    modelPath: str = ""
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "Auto"
    tta: bool = True
    liverAnchor: bool = True
    entropyOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    resultSegmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode
    autoRescore: bool = False


class HepatoblastomaSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updating = False
        self._job = None            # the running SegmentJob
        self._probe = None          # the running diagnostics probe (ProcessRunner)
        self._probeInfo = None      # what the probe found
        self._lastLog = ""
        self._guessedVolumeID = None
        self._guessedModality = None
        self._observedSegmentation = None
        self._regionCursor = None
        self._regionsStale = True
        self._debouncer = None
        self._models = []

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        problem = _supportProblem()
        if problem:  # 3D Slicer < 5.10: say so instead of failing with a traceback
            label = qt.QLabel(problem)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HepatoblastomaSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HepatoblastomaSegLogic()

        self._regionCursor = self.logic.regionCursor()
        self._debouncer = self.logic.debouncer(RESCORE_DELAY_S)
        self.ui.resultSelector.addAttribute("vtkMRMLSegmentationNode", self.logic.roleAttribute(), "segmentation")
        self.ui.progressBar.setVisible(False)
        self.ui.reviewFlagLabel.setVisible(False)

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.showLogButton.connect("clicked(bool)", self.onShowLog)
        self.ui.rescoreButton.connect("clicked(bool)", self.onRescore)
        self.ui.editSegmentButton.connect("clicked(bool)", self.onEditSegment)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self.ui.nextUncertainButton.connect("clicked(bool)", self.onNextUncertainRegion)
        self.ui.entropyOpacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.annotatorsSelector.connect("checkedNodesChanged()", self.updateButtons)
        self.ui.consensusButton.connect("clicked(bool)", self.onConsensus)
        self.ui.refreshDiagnosticsButton.connect("clicked(bool)", self.onRefreshDiagnostics)
        self.ui.copyDiagnosticsButton.connect("clicked(bool)", self.onCopyDiagnostics)
        self.initializeParameterNode()
        self.refreshModels()

    def cleanup(self):
        if self.logic is None:  # unsupported 3D Slicer: setup stopped at the message
            return
        self.cancelRunning()
        self.logic.shutdownWorker()
        self.timer.stop()
        self.removeObservers()

    def enter(self):
        if self.logic is None:
            return
        self.initializeParameterNode()
        if self._probeInfo is None and self._probe is None:
            self.startProbe()

    def exit(self):
        pass  # a running segmentation goes on while another module is shown

    def onSceneStartClose(self, caller, event):
        self.cancelRunning()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------------------------------------ parameters
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None):
        if self._updating or not self._parameterNode:
            return
        self._updating = True
        try:
            self.guessModality()
            self.selectModelForModality()
            self.observeResult(self._parameterNode.resultSegmentation)
            self.updateReviewFlag()
            self.updateModalityWarning()
            self.updateButtons()
        finally:
            self._updating = False

    def guessModality(self):
        """A newly chosen volume gets the modality its intensities suggest (the user can change it after)."""
        volume = self._parameterNode.inputVolume
        if volume is None or volume.GetID() == self._guessedVolumeID or volume.GetImageData() is None:
            return
        self._guessedVolumeID = volume.GetID()
        self._guessedModality = self.logic.guessModality(volume)
        label = {v: k for k, v in MODALITY_CHOICES.items()}[self._guessedModality]
        self._parameterNode.modality = label
        self.ui.modalityGuessLabel.text = _("guessed from the intensities")

    # ------------------------------------------------------------------------------------------------ models
    def refreshModels(self, select=None):
        entries = self.logic.models()
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for entry in entries:
            combo.addItem(entry.label, str(entry.path))
            combo.setItemData(combo.count - 1, f"{entry.path} ({entry.source})", qt.Qt.ToolTipRole)
        combo.addItem(_("Import model folder..."), IMPORT_MODEL_ITEM)
        combo.blockSignals(False)
        self._models = entries
        if select is not None:
            self._parameterNode.modelPath = str(select)
        self.selectModelForModality()
        self.showSelectedModel()

    def selectedModel(self):
        path = self._parameterNode.modelPath if self._parameterNode else ""
        return next((e for e in self._models if str(e.path) == path), None)

    def selectModelForModality(self):
        """Keep the chosen model when it fits the modality; else pick that modality's default."""
        if not self._parameterNode:
            return
        modality = MODALITY_CHOICES[self._parameterNode.modality]
        current = self.selectedModel()
        if current is None or current.modality != modality:
            default = self.logic.defaultModel(self._models, modality)
            if default is not None and str(default.path) != self._parameterNode.modelPath:
                self._parameterNode.modelPath = str(default.path)
        self.showSelectedModel()

    def showSelectedModel(self):
        entry = self.selectedModel()
        combo = self.ui.modelComboBox
        index = combo.findData(str(entry.path)) if entry else -1
        combo.blockSignals(True)
        combo.setCurrentIndex(index)
        combo.blockSignals(False)
        card = entry.card() if entry else _("No model selected. Import a model folder, or install the extension "
                                             "with its demo models.")
        if hasattr(self.ui.modelCardBrowser, "setMarkdown"):
            self.ui.modelCardBrowser.setMarkdown(card)
        else:
            self.ui.modelCardBrowser.setPlainText(card)

    def onModelActivated(self, index):
        data = self.ui.modelComboBox.itemData(index)
        if data == IMPORT_MODEL_ITEM:
            self.onImportModel()
            return
        self._parameterNode.modelPath = str(data or "")
        self.showSelectedModel()

    def onImportModel(self):
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Model bundle folder"))
        if not folder:
            self.showSelectedModel()
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be imported."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            from HepatoblastomaSegLib.errors import ModelError

            try:
                entry = self.logic.importModel(folder)
            except ModelError as exc:
                if "imported before" not in str(exc) or not slicer.util.confirmYesNoDisplay(
                        f"{exc}\n\n" + _("Replace the model imported before?")):
                    raise
                entry = self.logic.importModel(folder, replace=True)
            label = {v: k for k, v in MODALITY_CHOICES.items()}[entry.modality]
            self._parameterNode.modality = label
            self.refreshModels(select=entry.path)
            self.ui.modelCardCollapsibleButton.collapsed = False
            self.setStatus(_("Imported {label}: checksum verified.").format(label=entry.label))

    def updateModalityWarning(self):
        chosen = MODALITY_CHOICES[self._parameterNode.modality]
        text = self.logic.modalityMismatch(self._guessedModality, chosen, self.selectedModel())
        self.ui.modalityWarningLabel.text = text
        self.ui.modalityWarningLabel.setVisible(bool(text))

    # ------------------------------------------------------------------------------------------------ segment
    def updateButtons(self, *args):
        if not self._parameterNode:
            return
        running = self._job is not None
        canRun = bool(self._parameterNode.inputVolume and self.selectedModel())
        self.ui.applyButton.enabled = running or canRun
        self.ui.applyButton.text = _("Cancel") if running else _("Segment tumor")
        self.ui.applyButton.toolTip = (_("Stop the segmentation; nothing is added to the scene.") if running else
                                       _("Segment the tumour in a background process.") if canRun else
                                       _("Choose an input volume and a model."))
        result = self.currentResult()
        for button in (self.ui.rescoreButton, self.ui.nextUncertainButton, self.ui.editSegmentButton,
                       self.ui.exportDicomSegButton):
            button.enabled = result is not None
        self.ui.consensusButton.enabled = len(self.ui.annotatorsSelector.checkedNodes()) >= 2
        self.ui.showLogButton.enabled = bool(self._lastLog) or running

    def onApplyButton(self):
        if self._job is not None:
            self.cancelRunning()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            self.startSegmentation()

    def startSegmentation(self):
        p = self._parameterNode
        warning = self.ui.modalityWarningLabel.text
        if warning and not slicer.util.confirmOkCancelDisplay(warning + "\n\n" + _("Segment anyway?")):
            return
        if not self.logic.ensureDependencies():
            self.setStatus(_("Not started: the required Python packages are not installed."), "warning")
            return
        model = self.selectedModel()
        needed = self.logic.estimateMemoryGB(model, p.inputVolume)
        choice = self.logic.chooseDevice(p.device, self._probeInfo, needed)
        if choice.device is None:
            slicer.util.errorDisplay(choice.message)
            return
        job = self.logic.createJob(p.inputVolume, model, MODALITY_CHOICES[p.modality], choice.device, p.tta,
                                   liverAnchor=p.liverAnchor)
        job.start()  # writes the input file and starts the process; raises (shown) if either fails
        self._job = job
        self._lastLog = ""
        self.ui.progressBar.value = 0
        self.ui.progressBar.setVisible(True)
        self.setStatus(choice.message or _("Starting (loading PyTorch and the model)..."), choice.level)
        self.timer.start()
        self.updateButtons()

    def cancelRunning(self):
        if self._job is not None:
            self._job.cancel()
            self.onTimer()

    def onTimer(self):
        if self._probe is not None:
            self._probe.poll()
            if self._probe.state.finished:
                self.finishProbe()
        job = self._job
        if job is not None:
            update = job.poll()
            if update is not None and not job.state.finished:
                self.ui.progressBar.value = update.percent
                self.setStatus(update.text())
            if job.state.finished:
                self._job = None
                self.finishSegmentation(job)
        if self._debouncer is not None and self._debouncer.ready():
            self.rescore(auto=True)
        if self._job is None and self._probe is None and not (self._debouncer and self._debouncer.pending):
            self.timer.stop()

    def finishSegmentation(self, job):
        self._lastLog = job.log_text()
        self.ui.progressBar.setVisible(False)
        elapsed = self.logic.formatDuration(job.runner.elapsed_s)
        try:
            if job.state == "cancelled":
                self.setStatus(_("Cancelled: the process was stopped and nothing was added to the scene."))
            elif job.state == "failed":
                failure = self.logic.explainFailure(job)
                self.setStatus(failure.cause, "error")
                slicer.util.errorDisplay(failure.text(), detailedText=job.log_text(last=60))
            else:
                try:
                    with slicer.util.tryWithErrorDisplay(_("The results could not be loaded."), waitCursor=True):
                        result = self.logic.loadResults(job)
                        self._parameterNode.resultSegmentation = result.segmentation_node
                        self.logic.showResult(result, self._parameterNode.entropyOpacity)
                except Exception:  # noqa: BLE001 - already shown to the user; the timer must go on
                    self.setStatus(_("The results could not be loaded (see the message)."), "error")
                    return
                warnings = job.warnings()
                self.setStatus(_("Done in {t}.").format(t=elapsed) + (" " + " ".join(warnings) if warnings else ""),
                               "warning" if warnings else "info")
        finally:
            job.cleanup(keep_log=False)
            self.updateButtons()

    def onShowLog(self):
        text = self._job.log_text() if self._job is not None else self._lastLog
        dialog = qt.QDialog(slicer.util.mainWindow())
        dialog.setWindowTitle(_("Segmentation process log"))
        layout = qt.QVBoxLayout(dialog)
        edit = qt.QPlainTextEdit()
        edit.setReadOnly(True)
        edit.setPlainText(text)
        layout.addWidget(edit)
        copy = qt.QPushButton(_("Copy to clipboard"))
        copy.connect("clicked(bool)", lambda checked=False: qt.QApplication.clipboard().setText(text))
        layout.addWidget(copy)
        dialog.resize(900, 500)
        dialog.exec_()

    def setStatus(self, text, level="info"):
        colours = {"info": "", "warning": "color: #c05000;", "error": "color: #c00000;"}
        self.ui.statusLabel.styleSheet = colours.get(level, "")
        self.ui.statusLabel.text = text
        if level != "info":
            logging.warning(f"HepatoblastomaSeg: {text}")

    # ------------------------------------------------------------------------------------------------ review
    def currentResult(self):
        node = self._parameterNode.resultSegmentation if self._parameterNode else None
        if node is None:
            return None
        return self.logic.resultOf(node)

    def observeResult(self, node):
        if node is self._observedSegmentation:
            return
        if self._observedSegmentation is not None:
            for event in self.logic.segmentationEditEvents():
                self.removeObserver(self._observedSegmentation, event, self.onSegmentationEdited)
        self._observedSegmentation = node
        self._regionsStale = True
        if node is not None:
            for event in self.logic.segmentationEditEvents():
                self.addObserver(node, event, self.onSegmentationEdited)

    def updateReviewFlag(self):
        """Show why the result's summary asks for a careful review (nothing for older results)."""
        text = self.logic.reviewFlagText(self._parameterNode.resultSegmentation)
        self.ui.reviewFlagLabel.text = text
        self.ui.reviewFlagLabel.setVisible(bool(text))

    def onSegmentationEdited(self, caller=None, event=None):
        self._regionsStale = True
        if self._parameterNode and self._parameterNode.autoRescore and self.currentResult() is not None:
            self._debouncer.poke()
            self.timer.start()

    def onRescore(self):
        self.rescore(auto=False)

    def rescore(self, auto):
        result = self.currentResult()
        if result is None:
            return
        try:
            self.logic.rescore(result.segmentation_node, self._parameterNode.referenceSegmentation)
            self.setStatus(_("Re-scored at {t}.").format(t=time.strftime("%H:%M:%S")))
        except Exception as exc:  # noqa: BLE001 - shown, not raised: an automatic re-score must not pop dialogs
            self.setStatus(str(exc), "error")
            if not auto:
                slicer.util.errorDisplay(_("Re-scoring failed: {e}").format(e=exc))

    def onEditSegment(self):
        result = self.currentResult()
        if result is None:
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(result.segmentation_node)
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(result.volume_node)
        else:  # Slicer < 5.2
            editor.setMasterVolumeNode(result.volume_node)

    def onExportDicomSeg(self):
        result = self.currentResult()
        if result is None:
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("DICOM SEG export failed."), waitCursor=True):
                path = self.logic.exportDicomSeg(result.segmentation_node, result.volume_node)
                self.setStatus(_("DICOM SEG saved and added to the DICOM database: {p}").format(p=path))
        except Exception as exc:  # noqa: BLE001 - already shown by tryWithErrorDisplay; keep it in the status line
            self.setStatus(str(exc), "error")

    def onNextUncertainRegion(self):
        result = self.currentResult()
        if result is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not find the uncertain regions."), waitCursor=True):
            if self._regionsStale:
                self._regionCursor.reset(self.logic.uncertainRegions(result.segmentation_node))
                self._regionsStale = False
            region = self._regionCursor.next()
            if region is None:
                self.ui.uncertainRegionLabel.text = _("No uncertain region on the tumour boundary (entropy above "
                                                      "half of ln 2 within 3 mm of the surface).")
                return
            self.logic.jumpTo(region)
            self.ui.uncertainRegionLabel.text = region.describe(self._regionCursor.rank,
                                                                len(self._regionCursor.regions))

    def onOpacityChanged(self, value):
        result = self.currentResult()
        if result is not None and result.entropy_node is not None:
            result.show_entropy(float(value))

    # ------------------------------------------------------------------------------------------------ consensus
    def onConsensus(self):
        annotators = list(self.ui.annotatorsSelector.checkedNodes())
        with slicer.util.tryWithErrorDisplay(_("The consensus could not be made."), waitCursor=True):
            volume = self._parameterNode.inputVolume
            consensus = self.logic.consensus(annotators, volume)
            self._parameterNode.referenceSegmentation = consensus.segmentation_node
            self.ui.consensusStatusLabel.text = _("{name}: majority vote of {n} segmentations; the agreement table "
                                                  "is shown and the consensus is now the reference.").format(
                name=consensus.segmentation_node.GetName(), n=len(annotators))

    # ------------------------------------------------------------------------------------------------ diagnostics
    def startProbe(self):
        self.ui.deviceInfoLabel.text = _("Detecting the GPU...")
        self.ui.diagnosticsTextEdit.setPlainText(self.logic.diagnosticsText(None))
        try:
            self._probe = self.logic.startProbe()
        except Exception as exc:  # noqa: BLE001 - no PythonSlicer: say so, the module still works
            self._probe = None
            self.ui.deviceInfoLabel.text = _("Could not detect the GPU: {e}").format(e=exc)
            return
        self.timer.start()

    def finishProbe(self):
        probe, self._probe = self._probe, None
        try:
            self._probeInfo = self.logic.probeInfo(probe)
            self.ui.deviceInfoLabel.text = self.logic.deviceSummary(self._probeInfo)
        except ValueError:
            self.ui.deviceInfoLabel.text = _("Could not detect the GPU (see Diagnostics); Auto lets the segmentation "
                                             "decide.")
            self._probeInfo = None
        self.ui.diagnosticsTextEdit.setPlainText(self.logic.diagnosticsText(self._probeInfo, probe.log_text(last=20)))

    def onRefreshDiagnostics(self):
        if self._probe is None:
            self._probeInfo = None
            self.startProbe()

    def onCopyDiagnostics(self):
        qt.QApplication.clipboard().setText(self.ui.diagnosticsTextEdit.toPlainText())
        self.setStatus(_("Diagnostics copied to the clipboard."))


class HepatoblastomaSegLogic(ScriptedLoadableModuleLogic):
    """A thin layer over the Qt-free ``HepatoblastomaSegMRML`` and ``HepatoblastomaSegRunner`` packages, on the
    application's scene. Usable from the Python console and scripts:
    ``result = HepatoblastomaSegLogic().segment(volumeNode)``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._warmWorker = None

    def getParameterNode(self):
        return HepatoblastomaSegParameterNode(super().getParameterNode())

    # --- environment
    @staticmethod
    def userModelsDir() -> Path:
        return Path(slicer.app.slicerUserSettingsFilePath).parent / "HepatoblastomaSeg" / "Models"

    @staticmethod
    def pythonSlicerExecutable() -> str:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        for folder in (Path(slicer.app.slicerHome) / "bin", Path(slicer.app.slicerHome)):
            for name in ("PythonSlicer.exe", "PythonSlicer"):
                if (folder / name).is_file():
                    return str(folder / name)
        raise RuntimeError("PythonSlicer was not found next to 3D Slicer; the installation looks incomplete "
                           "(reinstall 3D Slicer)")

    @staticmethod
    def childEnvironment():
        from HepatoblastomaSegRunner.process import child_environment

        # The startup environment, not Slicer's own: the PythonSlicer launcher then sets up its paths itself.
        return child_environment(slicer.util.startupEnvironment())

    # --- small answers for the widget (it talks only to this Logic)
    @staticmethod
    def guessModality(volumeNode) -> str:
        from HepatoblastomaSegRunner import models

        return models.guess_modality(slicer.util.arrayFromVolume(volumeNode))

    @staticmethod
    def defaultModel(entries, modality):
        from HepatoblastomaSegRunner import models

        return models.default_model(entries, modality)

    @staticmethod
    def modalityMismatch(guessedModality, chosenModality, entry) -> str:
        from HepatoblastomaSegRunner import models

        return models.modality_mismatch(guessedModality, chosenModality, entry)

    @staticmethod
    def chooseDevice(requested, probeInfo, neededGB):
        from HepatoblastomaSegRunner import diagnostics

        return diagnostics.choose_device(requested, probeInfo, neededGB)

    @staticmethod
    def formatDuration(seconds) -> str:
        from HepatoblastomaSegRunner.process import format_duration

        return format_duration(seconds)

    @staticmethod
    def explainFailure(job):
        """A failed job in plain words: its cause and the next step (``.cause``, ``.text()``)."""
        from HepatoblastomaSegRunner import failures

        return failures.explain_failure(job.error_message, list(job.runner.log_lines),
                                        returncode=job.runner.returncode)

    @staticmethod
    def resultOf(segmentationNode):
        """The result a segmentation node belongs to, or None when it is not one of this module's results."""
        from HepatoblastomaSegLib.errors import HepatoblastomaSegError
        from HepatoblastomaSegMRML import SegmentationResult

        try:
            return SegmentationResult.from_segmentation_node(segmentationNode)
        except HepatoblastomaSegError:
            return None

    @staticmethod
    def regionCursor():
        from HepatoblastomaSegMRML import review

        return review.RegionCursor()

    @staticmethod
    def debouncer(delayS):
        from HepatoblastomaSegMRML import review

        return review.Debouncer(delayS)

    @staticmethod
    def roleAttribute() -> str:
        """The node attribute that marks this module's result segmentations (for the result selector)."""
        from HepatoblastomaSegMRML import nodes

        return nodes.ROLE_ATTRIBUTE

    @staticmethod
    def probeInfo(probe):
        """What the diagnostics probe found (ValueError when it printed nothing usable)."""
        from HepatoblastomaSegRunner import diagnostics

        return diagnostics.parse_probe_output(probe.stdout_lines)

    @staticmethod
    def deviceSummary(probeInfo) -> str:
        from HepatoblastomaSegRunner import diagnostics

        return diagnostics.device_summary(probeInfo)

    # --- dependencies
    def ensureDependencies(self, askConfirmation=True) -> bool:
        """torch through the PyTorch extension, the other packages through pip, after asking; False if declined."""
        from HepatoblastomaSegRunner import dependencies as deps

        if deps.installed_version("torch") is None:
            try:
                import PyTorchUtils
            except ImportError as exc:
                raise RuntimeError("This module needs the PyTorch extension: install 'PyTorch' from the Extensions "
                                   "Manager and restart 3D Slicer.") from exc
            requirement = deps.TORCH_REQUIREMENT[len("torch"):]
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation, None, requirement) is None:
                return False
        problem = deps.torch_problem()
        if problem:
            raise RuntimeError(problem)
        missing = deps.unmet()
        if not missing:
            return True
        constraints = str(deps.write_constraints(Path(slicer.app.temporaryPath) / "HepatoblastomaSeg-constraints.txt"))
        try:
            import slicer.packaging as packaging
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            options = {"constraints": constraints, "requester": "HepatoblastomaSeg", "prompt_install": askConfirmation}
            if not askConfirmation:
                options["skip_in_testing"] = False  # the self-test needs the packages it checks
            try:
                try:
                    packaging.pip_ensure(missing, **options)
                except TypeError:  # an earlier signature of slicer.packaging
                    packaging.pip_ensure(missing, requester="HepatoblastomaSeg")
            except RuntimeError as exc:
                if "declined" in str(exc).lower():
                    return False
                raise
        else:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    _("HepatoblastomaSeg needs these Python packages: {p}. Install them now? (This can take a few "
                      "minutes; 3D Slicer's own numpy, SimpleITK and VTK are left as they are.)").format(
                        p=", ".join(missing))):
                return False
            slicer.util.pip_install(missing + ["--constraint", constraints])
        still = deps.unmet(missing)
        if still:
            raise RuntimeError(f"These packages could not be installed: {', '.join(still)} (see the Python console)")
        return True

    # --- models
    def models(self, modality=None):
        from HepatoblastomaSegRunner import models

        return models.list_models(self.userModelsDir(), modality)

    def importModel(self, folder, replace=False):
        from HepatoblastomaSegRunner import models

        return models.import_model_folder(folder, self.userModelsDir(), replace=replace)

    def estimateMemoryGB(self, model, volumeNode):
        from HepatoblastomaSegRunner import models

        if model is None or volumeNode is None or volumeNode.GetImageData() is None:
            return None
        dims = volumeNode.GetImageData().GetDimensions()
        return models.estimate_inference_memory_gb(model.plans(), model.width(), image_shape_zyx=dims[::-1],
                                                   image_spacing_zyx_mm=volumeNode.GetSpacing()[::-1])

    # --- segmentation
    def warmWorker(self):
        """The ``hbseg serve --stdio`` worker kept alive between clicks and cases (a fresh one after a crash or an
        unanswered cancel), so torch, CUDA and the model load once."""
        from HepatoblastomaSegRunner.process import python_command
        from HepatoblastomaSegRunner.worker import WarmWorker

        if self._warmWorker is None:
            self._warmWorker = WarmWorker(
                lambda: python_command(self.pythonSlicerExecutable(), _libraryFolder(), ["serve", "--stdio"]),
                env=self.childEnvironment())
        return self._warmWorker.get()

    def shutdownWorker(self):
        if self._warmWorker is not None:
            self._warmWorker.shutdown()

    def createJob(self, volumeNode, model, modality, device="auto", tta=True, warm=True, liverAnchor=True):
        """A background segmentation of ``volumeNode`` (start it, poll it, then :meth:`loadResults`), sent to the
        warm worker (``warm=False``: in a new ``hbseg segment`` process). ``liverAnchor``: False turns the CT liver
        anchor off; True leaves it to the library (on with the bundled CT models)."""
        from HepatoblastomaSegMRML.background import SegmentJob, SegmentRequest

        request = SegmentRequest(model_path=model.path if model is not None else None, modality=modality,
                                 device=device, tta=tta, liver_anchor=None if liverAnchor else False)
        workDir = Path(slicer.app.temporaryPath) / "HepatoblastomaSeg" / time.strftime("run-%Y%m%d-%H%M%S")
        suffix = 0
        while workDir.with_name(f"{workDir.name}-{suffix}").exists():
            suffix += 1
        return SegmentJob(volumeNode, request, python_executable=self.pythonSlicerExecutable(),
                          work_dir=workDir.with_name(f"{workDir.name}-{suffix}"), env=self.childEnvironment(),
                          lib_dir=_libraryFolder(), worker=self.warmWorker() if warm else None)

    def loadResults(self, job):
        from HepatoblastomaSegMRML import application_environment

        application_environment()  # loads this extension's terminology into the Terminologies module (once)
        return job.load_results(slicer.mrmlScene)

    def segment(self, volumeNode, model=None, modality=None, device="auto", tta=True, timeoutS=None):
        """Segment and wait (scripts and the self-test), keeping the GUI alive; returns the result."""
        from HepatoblastomaSegRunner import models as catalogue
        from HepatoblastomaSegRunner.process import RunState

        modality = modality or catalogue.guess_modality(slicer.util.arrayFromVolume(volumeNode))
        model = model or catalogue.default_model(self.models(), modality)
        job = self.createJob(volumeNode, model, modality, device, tta)
        job.start()
        deadline = None if timeoutS is None else time.monotonic() + timeoutS
        while job.state is RunState.RUNNING:
            job.poll()
            if job.state is not RunState.RUNNING:
                break
            if deadline is not None and time.monotonic() > deadline:
                job.cancel()
                break
            slicer.app.processEvents()
            time.sleep(0.05)
        try:
            if job.state is not RunState.DONE:
                raise RuntimeError(f"segmentation {job.state.value}: {job.error_message}\n{job.log_text(last=30)}")
            return self.loadResults(job)
        finally:
            job.cleanup(keep_log=False)

    def showResult(self, result, opacity=0.5):
        """Show the segmentation, the entropy overlay and the metrics table; centre the views on the tumour."""
        from HepatoblastomaSegMRML import review

        result.segmentation_node.GetDisplayNode().SetVisibility(True)
        result.show_entropy(opacity)
        appLogic = slicer.app.applicationLogic()
        appLogic.GetSelectionNode().SetActiveTableID(result.table_node.GetID())
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        appLogic.PropagateTableSelection()
        centre = result.segmentation_node.GetSegmentCenterRAS(result.segment_id)
        if centre is not None:
            review.jump_slices_to(slicer.mrmlScene, centre)

    # --- review
    @staticmethod
    def segmentationEditEvents():
        names = ("SegmentModified", "RepresentationModified", "SourceRepresentationModified",
                 "MasterRepresentationModified")
        return sorted({getattr(slicer.vtkSegmentation, n) for n in names if hasattr(slicer.vtkSegmentation, n)})

    def rescore(self, segmentationNode, referenceNode=None):
        from HepatoblastomaSegMRML import rescore

        return rescore(slicer.mrmlScene, segmentationNode, [referenceNode] if referenceNode is not None else [])

    @staticmethod
    def reviewFlagText(segmentationNode) -> str:
        """The review reasons of the result's summary in plain words, and where its hidden review masks are; ""
        when there are no reasons."""
        from HepatoblastomaSegMRML import nodes, review, review_masks_hint

        text = review.review_flag_text(nodes.stored_summary(segmentationNode)) if segmentationNode else ""
        hint = review_masks_hint(segmentationNode) if text else ""
        return "\n".join(line for line in (text, hint) if line)

    @staticmethod
    def exportDicomSeg(segmentationNode, volumeNode, folder=None) -> Path:
        """Write the result's tumour segment as a DICOM SEG of the volume's source series (AUTOMATIC for the AI mask,
        SEMIAUTOMATIC once edited) into ``folder`` (default: a new folder in Slicer's temporary folder), index it in
        Slicer's DICOM database, and return the file's path."""
        import tempfile

        from HepatoblastomaSegMRML import dicom_export

        folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="hbseg-seg-", dir=slicer.app.temporaryPath))
        path = dicom_export.export_dicom_seg(segmentationNode, volumeNode, folder / "segmentation.dcm")
        dicom_export.add_to_dicom_database(path)
        return path

    def uncertainRegions(self, segmentationNode, **options):
        from HepatoblastomaSegMRML import review

        return review.regions_of_result(segmentationNode, **options)

    def jumpTo(self, region):
        from HepatoblastomaSegMRML import review

        return review.jump_slices_to(slicer.mrmlScene, region.centre_ras)

    def consensus(self, annotatorNodes, volumeNode=None):
        from HepatoblastomaSegMRML import consensus

        result = consensus(slicer.mrmlScene, annotatorNodes, volume_node=volumeNode)
        result.segmentation_node.GetDisplayNode().SetVisibility(True)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(result.table_node.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        return result

    # --- diagnostics
    def startProbe(self):
        import json

        from HepatoblastomaSegRunner import diagnostics
        from HepatoblastomaSegRunner.process import ProcessRunner

        models = json.dumps([diagnostics.model_summary(m) for m in self.models()])
        argv = diagnostics.probe_command(self.pythonSlicerExecutable(), _libraryFolder(), models_json=models,
                                         slicer_version=slicer.app.applicationVersion)
        return ProcessRunner(argv, env=self.childEnvironment(), require_done_event=False).start()

    def diagnosticsText(self, probeInfo, probeLog=""):
        from HepatoblastomaSegRunner import diagnostics

        info = probeInfo or diagnostics.collect(slicer_version=slicer.app.applicationVersion, models=self.models(),
                                                include_torch=False)
        text = diagnostics.diagnostics_text(info)
        if probeInfo is None and probeLog:
            text += "\nThe background probe did not answer:\n" + probeLog + "\n"
        return text


class HepatoblastomaSegTest(ScriptedLoadableModuleTest):
    """The whole workflow on a small synthetic phantom inside 3D Slicer: segment in the background (and cancel),
    load and show the result, edit and re-score, jump to uncertain regions, build a consensus, diagnostics."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        problem = _supportProblem()
        if problem:
            self.skipTest(problem)
        self.setUp()
        self.test_workflow()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()

    def _prepare(self):
        from HepatoblastomaSegRunner import selftest

        logic = HepatoblastomaSegLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False), "the Python dependencies are missing")
        data = selftest.make_phantom()
        model = selftest.selftest_model(data.folder, logic.userModelsDir())
        volume = slicer.util.loadVolume(str(data.image))
        return logic, data, model, volume

    def test_workflow(self):
        from HepatoblastomaSegMRML import METRICS_COLUMNS, load_mask, review
        from HepatoblastomaSegMRML.volumes import geometry_of_node, node_grid, segment_mask, set_segment_mask

        self.delayDisplay("Preparing a phantom CT and a model")
        logic, data, model, volume = self._prepare()

        self.delayDisplay("Segmenting in a background process")
        result = logic.segment(volume, model, "ct", device="auto", tta=False, timeoutS=600)
        logic.showResult(result, 0.4)
        self.assertTrue(geometry_of_node(result.entropy_node).matches(geometry_of_node(volume)))
        self.assertEqual(result.summary["model_name"], model.name)
        self.assertEqual(result.table_node.GetNumberOfColumns(), len(METRICS_COLUMNS))
        self.assertGreaterEqual(result.table_node.GetTable().GetValueByName(0, "volume_ml").ToDouble(), 0.0)

        self.delayDisplay("Editing the mask and re-scoring")
        grid = node_grid(volume)
        before = segment_mask(result.segmentation_node, result.segment_id, grid)
        edited = data.tumor.astype("uint8")
        self.assertEqual(edited.shape, before.shape)
        set_segment_mask(result.segmentation_node, result.segment_id, edited, grid)
        table = logic.rescore(result.segmentation_node)
        self.assertEqual(table.GetTable().GetValueByName(0, "edited").ToInt(), int((edited != before).any()))

        self.delayDisplay("Jumping to the most uncertain boundary region")
        regions = logic.uncertainRegions(result.segmentation_node, threshold_nats=0.0)
        self.assertTrue(regions, "a non-empty mask has a boundary band, and every entropy is >= 0")
        self.assertGreaterEqual(logic.jumpTo(regions[0]), 1)
        self.assertIs(review.RegionCursor(regions).next(), regions[0])

        self.delayDisplay("Consensus of three annotators")
        annotators = [load_mask(slicer.mrmlScene, path, volume, name=name)[0] for name, path in data.annotators.items()]
        consensus = logic.consensus(annotators, volume)
        self.assertEqual(consensus.table_node.GetNumberOfRows(), 3 + 3)  # 3 pairs, then each against the consensus
        table = logic.rescore(result.segmentation_node, consensus.segmentation_node)
        self.assertEqual(table.GetNumberOfRows(), 3)  # the mask, vs the AI mask, vs the consensus

        self.delayDisplay("Diagnostics")
        text = logic.diagnosticsText(None)
        for label in ("3D Slicer", "Python", "torch", "MONAI", "HepatoblastomaSeg library"):
            self.assertIn(label, text)
        shutil.rmtree(data.folder, ignore_errors=True)
        self.delayDisplay("Workflow test passed")

    def test_cancel_leaves_scene_unchanged(self):
        from HepatoblastomaSegMRML.background import scene_node_ids
        from HepatoblastomaSegRunner.process import RunState

        logic, data, model, volume = self._prepare()
        before = scene_node_ids(slicer.mrmlScene)
        job = logic.createJob(volume, model, "ct", "cpu", tta=True)
        job.start()
        deadline = time.monotonic() + 120
        while job.poll() is None and job.state is RunState.RUNNING and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertTrue(job.cancel())
        self.assertIs(job.state, RunState.CANCELLED)
        self.assertEqual(scene_node_ids(slicer.mrmlScene), before)
        job.cleanup(keep_log=False)
        shutil.rmtree(data.folder, ignore_errors=True)
        self.delayDisplay("Cancel test passed")
