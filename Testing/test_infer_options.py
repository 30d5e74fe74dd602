"""The segment options are defined once (infer/options.py): parser, namespace, child command line and resume key."""

from __future__ import annotations

import dataclasses
import random

import pytest

from HepatoblastomaSegLib.cli.serve import option_arguments, segment_parser
from HepatoblastomaSegLib.errors import ConfigError
from HepatoblastomaSegLib.infer.cohort import result_options
from HepatoblastomaSegLib.infer.options import RESULT_OPTIONS, PredictorOptions, flag_of


def _parse(arguments: list[str]) -> PredictorOptions:
    root, _ = segment_parser()
    args = root.parse_args(["segment", "in.nii.gz", "-o", "out", *arguments])
    return PredictorOptions.from_namespace(args)


def _random_options(rng: random.Random) -> PredictorOptions:
    return PredictorOptions(
        model=rng.choice([None, "ct-demo", "/models/my model"]), liver_model=rng.choice([None, "ct-liver-demo"]),
        modality=rng.choice([None, "ct", "mri"]), device=rng.choice(["auto", "cpu", "cuda"]),
        tta=rng.random() < 0.5, overlap=rng.choice([0.0, 0.25, 0.5, 0.75]), batch_size=rng.choice([None, 1, 3]),
        compile=rng.random() < 0.5, keep_largest=rng.random() < 0.5, min_component_ml=rng.choice([0.0, 1.5]),
        gpu_memory_gb=rng.choice([None, 8.0]), crop_to_body=rng.random() < 0.5,
        liver_anchor=rng.choice([None, True, False]), short_scan_padding=rng.choice(["mirror", "zero"]))


def test_every_field_is_a_flag_of_hbseg_segment():
    _, parser = segment_parser()
    dests = {a.dest for a in parser._actions}
    for f in dataclasses.fields(PredictorOptions):
        assert f.name in dests, f.name
        assert flag_of(f.name) in parser._option_string_actions


def test_defaults_parse_to_the_dataclass_defaults():
    assert _parse([]) == PredictorOptions()


def test_to_cli_args_round_trips_through_the_parser():
    rng = random.Random(7)
    for _ in range(60):
        options = _random_options(rng)
        assert _parse(options.to_cli_args()) == options, options.to_cli_args()


def test_the_serve_request_translation_agrees_with_to_cli_args():
    """The Slicer module sends options by long name; the worker turns them into the same command line."""
    rng = random.Random(11)
    _, parser = segment_parser()
    for _ in range(30):
        options = _random_options(rng)
        changed = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
                   if getattr(options, f.name) != f.default}
        assert _parse(option_arguments(changed, parser)) == options


@pytest.mark.parametrize("arguments, flag", [(["--overlap", "1.0"], "--overlap"), (["--batch-size", "0"], "--batch-size"),
                                             (["--gpu-memory-gb", "-1"], "--gpu-memory-gb"),
                                             (["--min-component-ml", "-2"], "--min-component-ml")])
def test_impossible_values_are_refused_naming_the_flag(arguments, flag):
    with pytest.raises(ConfigError, match=flag):
        _parse(arguments)


def test_a_padding_no_engine_knows_is_refused_before_any_run():
    from HepatoblastomaSegLib.sliding_window import PAD_MODES

    field = next(f for f in dataclasses.fields(PredictorOptions) if f.name == "short_scan_padding")
    assert set(field.metadata["argparse"]["choices"]) == set(PAD_MODES)
    with pytest.raises(ConfigError, match="--short-scan-padding must be one of mirror, zero, got 'reflect'"):
        PredictorOptions(short_scan_padding="reflect").validate()
    with pytest.raises(ConfigError, match="--short-scan-padding: invalid choice: 'reflect'"):
        _parse(["--short-scan-padding", "reflect"])
    assert _parse(["--short-scan-padding", "zero"]).short_scan_padding == "zero"


def test_every_option_that_changes_the_mask_is_in_the_resume_key():
    """A cohort rerun recomputes a case when any result-shaping option changed (the liver anchor was missing)."""
    assert "liver_anchor" in RESULT_OPTIONS
    assert {"device", "batch_size", "compile", "gpu_memory_gb"}.isdisjoint(RESULT_OPTIONS)
    base = result_options(PredictorOptions(), "nifti")
    for name in RESULT_OPTIONS:
        field = next(f for f in dataclasses.fields(PredictorOptions) if f.name == name)
        default = field.default
        other = True if default is None else (not default if isinstance(default, bool)
                                              else default + 0.1 if isinstance(default, float) else "x")
        changed = dataclasses.replace(PredictorOptions(), **{name: other})
        assert result_options(changed, "nifti") != base, name


def test_options_an_imported_model_would_ignore_are_refused_by_name(tmp_path):
    """An imported nnU-Net or MONAI model runs its own framework's inference: --overlap or --liver-anchor would be
    silently ignored, so they are refused, naming the flags."""
    from HepatoblastomaSegLib.infer.predictor import _refuse_options_that_do_not_apply

    _refuse_options_that_do_not_apply(PredictorOptions(device="cpu", tta=False, keep_largest=True), "nnU-Net")
    with pytest.raises(ConfigError, match="--overlap 0.6 --liver-anchor: not used by an imported nnU-Net model"):
        _refuse_options_that_do_not_apply(PredictorOptions(overlap=0.6, liver_anchor=True), "nnU-Net")
    with pytest.raises(ConfigError, match="^--no-crop-to-body: not used by an imported MONAI bundle model"):
        _refuse_options_that_do_not_apply(PredictorOptions(crop_to_body=False), "MONAI bundle")
    with pytest.raises(ConfigError, match="^--short-scan-padding zero: not used by an imported nnU-Net model"):
        _refuse_options_that_do_not_apply(PredictorOptions(short_scan_padding="zero"), "nnU-Net")
    with pytest.raises(ConfigError, match="^--liver-anchor-min-fraction-inside 0.5: not used by an imported nnU-Net"):
        _refuse_options_that_do_not_apply(PredictorOptions(liver_anchor_min_fraction_inside=0.5), "nnU-Net")
