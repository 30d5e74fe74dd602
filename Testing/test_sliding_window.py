"""The one sliding-window engine: MONAI's own ``sliding_window_inference`` is the reference, and the three users
(tumour predictor, liver model, training validation) really go through the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from HepatoblastomaSegLib import sliding_window
from HepatoblastomaSegLib.bundle import load_bundle
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
from HepatoblastomaSegLib.io import Geometry, Volume
from HepatoblastomaSegLib.preprocess import preprocess_image, resample_to_original
from HepatoblastomaSegLib.preprocess.liver import largest_component, liver_mask_from_model
from HepatoblastomaSegLib.progress import NullProgress
from HepatoblastomaSegLib.sliding_window import (ALL_FLIPS, NO_FLIPS, SlidingWindowEngine, mirror_pad,
                                                 mirror_padding, padding_to_patch)
from HepatoblastomaSegLib.train.validate import predict_labels

from tiny_models import tiny_bundle, tiny_liver_bundle

PATCH = (8, 32, 32)


def monai_softmax(network, image: torch.Tensor, *, windows: int, flips=NO_FLIPS) -> torch.Tensor:
    """MONAI's sliding window with nnU-Net's settings over the (flip-averaged) softmax, written independently."""
    def predictor(x: torch.Tensor) -> torch.Tensor:
        total = sum(torch.flip(torch.softmax(network(torch.flip(x, f) if f else x), 1), f) if f
                    else torch.softmax(network(x), 1) for f in flips)
        return total / len(flips)

    with torch.no_grad():
        return sliding_window_inference(image[None, None], list(PATCH), windows, predictor, overlap=0.5,
                                        mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0.0)[0]


@pytest.fixture
def spy(monkeypatch):
    """Records every engine run (network, image shape) and lets it run."""
    calls = []
    run = SlidingWindowEngine.probabilities

    def recording(self, network, image, **kwargs):
        calls.append((self, network, tuple(image.shape)))
        return run(self, network, image, **kwargs)

    monkeypatch.setattr(SlidingWindowEngine, "probabilities", recording)
    return calls


@pytest.fixture(scope="module")
def tumor_bundle(tmp_path_factory):
    return load_bundle(tiny_bundle(tmp_path_factory.mktemp("tumor")))


@pytest.fixture(scope="module")
def liver_bundle(tmp_path_factory):
    return load_bundle(tiny_liver_bundle(tmp_path_factory.mktemp("liver")))


@pytest.mark.parametrize("shape", [(9, 33, 50), (5, 40, 33)])  # larger than a patch; thinner than one in z
@pytest.mark.parametrize("windows", [1, 3])
def test_engine_equals_monai_sliding_window_inference(tumor_bundle, shape, windows):
    net = tumor_bundle.cached_network("cpu")
    image = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    engine = SlidingWindowEngine(PATCH, windows_per_call=windows)
    ours = engine.probabilities(net, image)
    assert ours.shape == (2, *shape) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, monai_softmax(net, image, windows=windows), atol=1e-6, rtol=0)


def test_engine_reports_every_window_batch(tumor_bundle):
    seen = []
    engine = SlidingWindowEngine(PATCH, windows_per_call=2)
    engine.probabilities(tumor_bundle.cached_network("cpu"), torch.zeros(13, 47, 70),
                         on_window_batch=lambda i, n: seen.append((i, n)))
    total = engine.window_batches((13, 47, 70))
    assert total == 12 and seen == [(i, total) for i in range(total)]  # 3 x 2 x 4 windows (z, y, x), 2 per call


def test_engine_refuses_nonsense_settings():
    with pytest.raises(ValueError, match="overlap"):
        SlidingWindowEngine(PATCH, overlap=1.0)
    with pytest.raises(ValueError, match="patch"):
        SlidingWindowEngine((8, 32))
    with pytest.raises(ValueError, match="stitch"):
        SlidingWindowEngine(PATCH, stitch="mean")
    with pytest.raises(ValueError, match="pad_mode"):
        SlidingWindowEngine(PATCH, pad_mode="reflect")


@pytest.mark.parametrize(("n", "before", "after"), [(5, 6, 6), (5, 12, 3), (2, 5, 4), (1, 2, 3), (7, 0, 1)])
def test_mirror_pad_is_numpys_reflect_even_beyond_one_image_length(n, before, after):
    image = torch.randn(n, 3, 2, generator=torch.Generator().manual_seed(n))
    padding = ((before, after), (0, 0), (1, 1))
    np.testing.assert_array_equal(mirror_pad(image, padding).numpy(), np.pad(image.numpy(), padding, mode="reflect"))


def test_padding_is_split_as_monai_pads_a_short_image_and_mirrored_along_the_slices_only():
    assert padding_to_patch((5, 40, 30), PATCH) == ((1, 2), (0, 0), (1, 1))
    assert mirror_padding((5, 40, 30), PATCH) == ((1, 2), (0, 0), (0, 0))
    assert padding_to_patch((8, 32, 33), PATCH) == mirror_padding((8, 32, 33), PATCH) == ((0, 0),) * 3


def test_a_short_image_is_padded_with_its_mirror_image_and_the_padding_cropped_off(tumor_bundle):
    """Thinner than a patch in z and in x: the engine runs on the image mirrored along z (MONAI's sliding window,
    which pads x with zeros, over numpy's reflect-padded image, cropped back); with zero padding the network sees
    something else near the image's ends."""
    net = tumor_bundle.cached_network("cpu")
    image = torch.randn(5, 40, 30, generator=torch.Generator().manual_seed(6))
    mirrored = SlidingWindowEngine(PATCH, pad_mode="mirror").probabilities(net, image)
    reflected = torch.from_numpy(np.pad(image.numpy(), ((1, 2), (0, 0), (0, 0)), mode="reflect"))
    assert mirrored.shape == (2, 5, 40, 30)
    torch.testing.assert_close(mirrored, monai_softmax(net, reflected, windows=1)[:, 1:6], atol=1e-6, rtol=0)
    zero = SlidingWindowEngine(PATCH).probabilities(net, image)
    assert (mirrored - zero).abs().max() > 1e-3
    # An image at least a patch along every axis is not padded either way.
    large = torch.randn(9, 33, 40, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(SlidingWindowEngine(PATCH, pad_mode="mirror").probabilities(net, large),
                               SlidingWindowEngine(PATCH).probabilities(net, large), atol=0, rtol=0)


def test_engine_stitching_logits_equals_monai_on_the_logits(tumor_bundle):
    net = tumor_bundle.cached_network("cpu")
    image = torch.randn(9, 33, 50, generator=torch.Generator().manual_seed(4))
    ours = SlidingWindowEngine(PATCH, windows_per_call=2, stitch="logits").probabilities(net, image)
    with torch.no_grad():
        logits = sliding_window_inference(image[None, None], list(PATCH), 2, net, overlap=0.5, mode="gaussian",
                                          sigma_scale=0.125)[0]
    torch.testing.assert_close(ours, torch.softmax(logits, dim=0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("tta", [False, True])
def test_predictor_goes_through_the_engine_and_equals_monai(tumor_bundle, spy, tta):
    predictor = Predictor(tumor_bundle, PredictorOptions(device="cpu", tta=tta))
    data = torch.randn(9, 33, 40, generator=torch.Generator().manual_seed(5))  # 2 x 2 x 2 windows
    probs, device = predictor._probabilities_with_fallback(data, NullProgress(), [])
    assert device == "cpu" and len(spy) == 1 and spy[0][1] is predictor.network
    assert spy[0][0].flips == (ALL_FLIPS if tta else NO_FLIPS)
    expected = monai_softmax(predictor.network, data, windows=predictor.batch_size,
                             flips=ALL_FLIPS if tta else NO_FLIPS)
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)


def ct_volume(seed: int = 0, slices: int = 12) -> Volume:
    """A small CT-like volume (HU), 3 mm slices, 1.2 mm in-plane: resampled onto the tiny plans' grid."""
    rng = np.random.default_rng(seed)
    array = rng.normal(60.0, 40.0, size=(slices, 40, 44)).astype(np.float32)
    array[:, :4] = -1000.0  # some air, so the modality check sees a CT
    return Volume(array, Geometry(size=array.shape[::-1], spacing_mm=(1.2, 1.2, 3.0), origin_mm=(0.0, 0.0, 0.0)))


def test_liver_model_goes_through_the_engine_and_equals_monai(liver_bundle, spy):
    volume = ct_volume()
    liver = liver_mask_from_model(volume, liver_bundle, device="cpu").array
    net = liver_bundle.cached_network("cpu")
    assert len(spy) == 1 and spy[0][1] is net and spy[0][0].flips == NO_FLIPS and spy[0][0].stitch == "logits"
    # MONAI's sliding window over the logits and their softmax (the liver step before the engine), both channels
    # back onto the input grid, the argmax, the largest component.
    prep = preprocess_image(volume, liver_bundle.plans, device="cpu")
    with torch.no_grad():
        logits = sliding_window_inference(prep.data[None, None], list(PATCH), 1, net, overlap=0.5, mode="gaussian",
                                          sigma_scale=0.125)
    back = resample_to_original(torch.softmax(logits, dim=1)[0], prep)
    expected = largest_component(np.asarray(back).argmax(axis=0) == 1)
    assert liver.shape == volume.array.shape and 0 < np.count_nonzero(expected)
    assert np.count_nonzero(liver != expected) <= 2  # p > 0.5 on the liver channel vs argmax: ties at most


def test_validation_goes_through_the_engine_and_equals_monai(tumor_bundle, spy):
    net = tumor_bundle.cached_network("cpu")
    image = torch.randn(13, 47, 70, generator=torch.Generator().manual_seed(7))
    labels = predict_labels(net, image, PATCH, device=torch.device("cpu"), autocast_dtype=None, batch_size=2)
    assert len(spy) == 1 and spy[0][1] is net
    torch.testing.assert_close(labels, monai_softmax(net, image, windows=2).argmax(dim=0), atol=0, rtol=0)


def test_the_engine_module_imports_neither_preprocess_nor_infer():
    """The engine sits below both layers (preprocess must not import infer)."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(sliding_window.__file__).read_text())
    ours = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0}
    ours |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
             if alias.name.startswith("HepatoblastomaSegLib")}
    assert not {m for m in ours if "infer" in m or "preprocess" in m}, ours


def test_largest_component_equals_scipy_on_the_whole_array():
    """Labelling inside the bounding box changes nothing: scipy's label on the whole array is the reference."""
    from scipy import ndimage

    rng = np.random.default_rng(11)
    mask = np.zeros((20, 40, 50), dtype=np.uint8)
    mask[3:15, 5:30, 10:40] = rng.random((12, 25, 30)) > 0.45  # many components
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    np.testing.assert_array_equal(largest_component(mask), (labels == np.argmax(sizes)).astype(np.uint8))
    assert largest_component(np.zeros((4, 5, 6))).sum() == 0
    single = np.zeros((4, 5, 6), dtype=bool)
    single[1, 2, 3] = True
    np.testing.assert_array_equal(largest_component(single), single.astype(np.uint8))


def test_a_ct_prediction_runs_tumour_and_liver_models_through_the_engine(tumor_bundle, liver_bundle, spy):
    predictor = Predictor(tumor_bundle, PredictorOptions(device="cpu", tta=False), liver_bundle=liver_bundle)
    prediction = predictor.predict(ct_volume(slices=5))  # shorter than the tiny model's patch
    assert [network for _, network, _ in spy] == [predictor.network, liver_bundle.cached_network("cpu")]
    assert [engine.stitch for engine, _, _ in spy] == ["softmax", "logits"]
    assert prediction.summary["liver_source"].startswith("ct-liver-tiny")
    # Both networks pad a short scan with its mirror image by default, and the summary says by how much.
    assert [engine.pad_mode for engine, _, _ in spy] == ["mirror", "mirror"]
    padding = padding_to_patch(spy[0][2], tumor_bundle.plans.patch_size_zyx)
    assert prediction.summary["short_scan_padding"] == {"mode": "mirror", "voxels_zyx": [a + b for a, b in padding]}
    assert prediction.summary["short_scan_padding"]["voxels_zyx"][0] > 0
    spy.clear()
    zero = Predictor(tumor_bundle, PredictorOptions(device="cpu", tta=False, short_scan_padding="zero"),
                     liver_bundle=liver_bundle).predict(ct_volume(slices=5))
    assert [engine.pad_mode for engine, _, _ in spy] == ["zero", "zero"]
    assert zero.summary["short_scan_padding"]["mode"] == "zero"
