"""Headless explorer tests: widgets -> models -> Bokeh sources, caching, batching, latest-wins."""

import threading
import time

import numpy as np
import pytest

pytest.importorskip("jupyter_bokeh")

import widgets  # noqa: E402
from toolkit.models import CompareWarpModel, ZogyModel  # noqa: E402
from toolkit.sim import simulate_pair, simulate_stack  # noqa: E402


def _find(w, css):
    out = [w] if css in getattr(w, "_dom_classes", ()) else []
    for c in getattr(w, "children", ()):
        out += _find(c, css)
    return out


@pytest.fixture(scope="module")
def stack():
    return simulate_stack(seed=3, size=128)


def test_compare_warp_explorer_widget_to_model_to_source(stack):
    ex = widgets.CompareWarpExplorer(CompareWarpModel(stack.direct_warps, stack.psf_matched_warps))
    assert ex.render_count == 1
    slider = _find(ex.widget, "ds-ctl-spatialThreshold")[0]
    before = ex.sources["coadd"].data["image"][0]
    mask_before = ex.mask_layer("CLIPPED")
    slider.value = 1.0  # no candidate can be clipped (the test is a fraction > spatialThreshold)
    assert ex.model.config.spatialThreshold == 1.0
    after = ex.sources["coadd"].data["image"][0]
    assert after is not before
    assert mask_before.sum() > 0 and ex.mask_layer("CLIPPED").sum() == 0
    # the packed page decodes to the OR-reduced CLIPPED plane of the coadd
    c = ex.model.outputs["coadd"]
    from widgets.display import block_factor, reduce_block
    k = block_factor(c.shape, ex.display.max_pixels)
    expect = (reduce_block(c.mask, k, "or") & np.int32(c.mask_planes.bitmask(["CLIPPED"]))) != 0
    np.testing.assert_array_equal(ex.mask_layer("CLIPPED"), expect)
    # the template and the candidates were not recomputed: only filter + final stack ran
    rc = ex.model.outputs["run_counts"]
    assert rc["template"] == 1 and rc["candidates"] == 1 and rc["filter"] == 2 and rc["coadd"] == 2
    # model -> widget direction
    ex.model.config.spatialThreshold = 0.7
    assert slider.value == pytest.approx(0.7)
    # the epoch selector changes the warpDiff panel only
    n = ex.render_count
    ex.model.epoch = 4
    assert ex.render_count == n + 1 and "epoch 4" in ex.figures["warp_diff"].title.text
    # every buffer is uint8 and at most the screen size
    for name, src in ex.sources.items():
        img = src.data["image"][0]
        assert img.dtype == np.uint8 and max(img.shape) <= ex.display.max_pixels


def test_batched_update_renders_once(stack):
    ex = widgets.CompareWarpExplorer(CompareWarpModel(stack.direct_warps, stack.psf_matched_warps))
    n, c = ex.render_count, ex.model.compute_count
    ex.model.config.param.update(spatialThreshold=0.3, maxNumEpochs=3)
    assert ex.render_count == n + 1 and ex.model.compute_count == c + 1


def test_out_of_range_widget_value_is_refused(stack):
    ex = widgets.CompareWarpExplorer(CompareWarpModel(stack.direct_warps, stack.psf_matched_warps))
    txt = _find(ex.widget, "ds-ctl-thresholdValue")[0]
    old = ex.model.config.detect.thresholdValue
    txt.value = -1.0  # thresholds must be > 0
    assert ex.model.config.detect.thresholdValue == old and txt.value == old


def test_superseded_recompute_never_published(stack):
    m = CompareWarpModel(stack.direct_warps, stack.psf_matched_warps, background=True, compute=False)
    published = []
    m.param.watch(lambda e: published.append(m.outputs["config"].spatialThreshold), ["version"])
    real = m._compute
    gate = threading.Event()

    def slow(snap):
        if snap[0].spatialThreshold == 0.1:
            gate.wait(10)  # the first (slow) request is still running when the next arrives
        return real(snap)

    m._compute = slow
    m.config.spatialThreshold = 0.1
    time.sleep(0.05)
    m.config.spatialThreshold = 0.9
    gate.set()
    m.wait()
    assert published == [0.9]
    assert m.outputs["config"].spatialThreshold == 0.9


def test_zogy_and_pipeline_explorers():
    pair = simulate_pair(size=128, seed=2)
    zx = widgets.ZogyExplorer(ZogyModel(pair.science, pair.reference))
    n_before = len(zx.catalog_source.data["x"])
    assert n_before >= 1 and set(zx.catalog_source.data["color"]) == {"lime"}
    # an entry whose peak is on a flagged pixel is drawn orange, the others stay lime
    x0, y0 = (int(round(zx.catalog_source.data[k][0])) for k in ("x", "y"))
    flagged = pair.science.copy()
    flagged.mask[y0 - 2:y0 + 3, x0 - 2:x0 + 3] |= flagged.mask_planes.bitmask(["BAD"])
    zf = widgets.ZogyExplorer(ZogyModel(flagged, pair.reference))
    colors = zf.catalog_source.data["color"]
    assert colors[0] == "orange" and colors.count("orange") == 1 and len(colors) == n_before
    assert zx.sources["scorr"].data["image"][0].dtype == np.uint8
    zx.model.config.transientThreshold = 1e6  # nothing passes
    assert len(zx.catalog_source.data["x"]) == 0
    assert "noise correlation" not in zx.status.value
    # the diffstack-only noise-correlation fields have controls like LSST's, and the status line
    # names the factor the planes were multiplied by
    box = [w for w in zx.controls.children[0].children if "ds-ctl-noiseCorrelationFactor" in w._dom_classes]
    assert len(box) == 1
    box[0].value = 2.0
    assert zx.model.config.noiseCorrelationFactor == 2.0 and "variance × 2 (noise correlation)" in zx.status.value
    with pytest.warns(RuntimeWarning, match="is uncertain"):  # a 128^2 pair: few source-free pixels
        zx.model.config.doMeasureNoiseCorrelation = True  # a measured factor comes with its error
    res = zx.model.outputs["result"]
    assert f"variance × {res.noise_correlation:.3g} ± {res.noise_correlation_error:.2g} (noise correlation)" in zx.status.value
    px = widgets.explore_pipeline(simulate_stack(seed=4, size=96, n_epochs=5))
    v = px.zogy.model.version
    px.model.science_epoch = 2
    assert px.zogy.model.version == v + 1


def test_export_and_tap(stack, tmp_path):
    ex = widgets.CompareWarpExplorer(CompareWarpModel(stack.direct_warps, stack.psf_matched_warps))
    ex.model.config.spatialThreshold = 0.25
    text = ex.export_config(str(tmp_path / "o.py"), "pex")
    assert "config.spatialThreshold = 0.25" in text and (tmp_path / "o.py").read_text() == text

    class Ev:
        x, y = 60.0, 70.0

    ex._tap(Ev())
    d = ex.series_source.data
    assert len(d["epoch"]) == len(stack.direct_warps)
    np.testing.assert_allclose(d["value"], [w.image[70, 60] for w in stack.direct_warps])


def test_reductions_keep_what_matters():
    from widgets.display import reduce_block

    a = np.zeros((8, 8))
    a[3, 5] = -9.0
    a[0, 0] = 2.0
    r = reduce_block(a, 4, "absmax")
    assert r[0, 1] == -9.0 and r[0, 0] == 2.0
    m = np.zeros((8, 8), np.int32)
    m[7, 7] = 4
    assert reduce_block(m, 4, "or")[1, 1] == 4


def test_status_line_follows_recomputes(stack):
    ex = widgets.CompareWarpExplorer(CompareWarpModel(stack.direct_warps, stack.psf_matched_warps))
    assert "filter 1" in ex.status.value
    ex.model.config.spatialThreshold = 0.2
    assert "filter 2" in ex.status.value and "template 1" in ex.status.value


def test_zoom_recuts_window_at_screen_resolution(stack):
    from types import SimpleNamespace

    ex = widgets.CompareWarpExplorer(CompareWarpModel(stack.direct_warps, stack.psf_matched_warps), widgets.DisplaySettings(max_pixels=64))
    full = ex.sources["coadd"].data["image"][0]
    assert max(full.shape) <= 64 and full.shape != stack.direct_warps[0].shape  # reduced
    # a RangesUpdate with no event loop re-cuts at once: a 40 px window ships at full resolution
    ex._ranges_updated(SimpleNamespace(x0=19.5, x1=59.5, y0=9.5, y1=49.5))
    d = ex.sources["coadd"].data
    assert d["image"][0].shape == (40, 40) and d["x"][0] == 19.5 and d["y"][0] == 9.5 and d["dw"][0] == 40.0
    c = ex.model.outputs["coadd"]
    lo, hi = ex.limits["coadd"]
    from widgets.display import stretch_uint8
    np.testing.assert_array_equal(d["image"][0], stretch_uint8(c.image[10:50, 20:60], lo, hi, ex.display.stretch))
    # every layer follows the window
    assert ex.sources["epoch_count"].data["image"][0].shape == (40, 40)
    assert ex.mask_layer("NO_DATA").shape in ((40, 40), (1, 1))


def test_panel_bytes_and_hover_metadata(stack):
    ex = widgets.CompareWarpExplorer(CompareWarpModel(stack.direct_warps, stack.psf_matched_warps), widgets.DisplaySettings(max_pixels=64))
    screen = 64 * 64
    coadd_bytes = ex.bytes_sent["coadd"] + sum(v for k, v in ex.bytes_sent.items() if k.startswith("mask:"))
    assert coadd_bytes <= 2 * screen + len(ex._mask_pages)  # image + one packed page; hidden pages 1 B
    # showing a plane of the second page ships that page too
    second = ex._mask_pages[1][0]
    ex._mask_renderers[second].visible = True
    ex.model.config.spatialThreshold = 0.2
    assert ex.bytes_sent["mask:1"] in (1, ex.bytes_sent["coadd"])
    # the hover decodes values from lo/hi/stretch shipped with each image
    d = ex.sources["coadd"].data
    assert d["lo"][0] < d["hi"][0] and d["stretch"][0] in ("linear", "asinh")
    hover = [t for t in ex.figures["coadd"].tools if type(t).__name__ == "HoverTool"][0]
    assert [n for n, _ in hover.tooltips] == ["x, y", "value", "masks", "RA, Dec"]
    assert ex._wcs_args()["crval"] == pytest.approx(list(stack.direct_warps[0].wcs.wcs.crval))


def test_blink_and_cutouts(stack):
    from types import SimpleNamespace

    ex = widgets.CompareWarpExplorer(CompareWarpModel(stack.direct_warps, stack.psf_matched_warps, config=None))
    ex.blink.value = 1
    assert ex._blink_renderer.visible and not ex._renderers["coadd"].visible
    ex.blink.value = 0
    assert not ex._blink_renderer.visible and ex._renderers["coadd"].visible
    # click where some epoch is clipped: the cutout mosaic has one frame per clipped epoch
    masks = ex.model.pipeline.artifact_masks
    count = sum(m["CLIPPED"].astype(int) for m in masks)
    iy, ix = np.unravel_index(np.argmax(count), count.shape)
    assert count[iy, ix] > 0
    ex._tap(SimpleNamespace(x=float(ix), y=float(iy)))
    img = ex.sources["cutouts"].data["image"][0]
    n = len(stack.direct_warps)
    assert img.shape == (ex.cutout_size + 2, n * (ex.cutout_size + 2))
    assert len(ex.cutout_frames.data["x"]) == count[iy, ix]
    assert len(ex.series_source.data["epoch"]) == n


def test_zogy_explorer_export_and_save(tmp_path, monkeypatch):
    from astropy.table import Table

    from toolkit.io import read_exposure

    pair = simulate_pair(size=96, seed=2)
    ex = widgets.ZogyExplorer(ZogyModel(pair.science, pair.reference))
    text = ex.export_config(path=str(tmp_path / "z.py"), fmt="pex")
    assert (tmp_path / "z.py").read_text() == text and "config." in text
    monkeypatch.chdir(tmp_path)
    diff, score, cat = ex.save_fits()
    np.testing.assert_array_equal(read_exposure(diff).image, ex.model.outputs["diff"].image)
    assert len(Table.read(cat)) == len(ex.model.outputs["catalog"])
    assert not list(tmp_path.glob("*.tmp"))


def test_zogy_catalog_threshold_remakes_only_the_catalog():
    """transientThreshold and transientMinPixels are read by the catalog alone: moving them
    re-makes it from the last result (the same as a fresh run's) without running ZOGY again."""
    from toolkit.zogy import zogy

    pair = simulate_pair(size=128, seed=4)
    m = ZogyModel(pair.science, pair.reference)
    first = m.outputs
    assert m.zogy_runs == 1 and len(first["catalog"]) > 0
    m.config.transientThreshold = 20.0
    assert m.zogy_runs == 1 and m.compute_count == 2
    assert set(m.changed) == {"catalog", "result"}  # the image panels are not re-rendered
    assert m.outputs["scorr"] is first["scorr"] and m.outputs["diff"] is first["diff"]
    fresh = zogy(pair.science, pair.reference, m.config)
    assert np.abs(m.outputs["catalog"]["scorr"]).min() >= 20 > np.abs(first["catalog"]["scorr"]).min()
    assert len(m.outputs["catalog"]) == len(fresh.catalog)
    for col in ("x", "y", "scorr", "flux", "npix"):
        np.testing.assert_array_equal(m.outputs["catalog"][col], fresh.catalog[col])
    assert first["result"].catalog is first["catalog"]  # the earlier result is left as it was
    m.config.transientMinPixels = 3
    assert m.zogy_runs == 1 and len(m.outputs["catalog"]) <= len(fresh.catalog)
    m.config.paddingSeed = 7  # anything else runs ZOGY
    assert m.zogy_runs == 2 and m.outputs["scorr"] is not first["scorr"]
    m.set_inputs(template=pair.reference)  # the same objects: nothing to redo, but a new request
    assert m.zogy_runs == 2


def test_warnings_reach_the_explorers_notes(stack):
    """A warning given inside a widget's callback reaches no notebook cell: the model keeps the
    warnings that hold for its outputs, and the explorer shows them.  A sky-offset warning is
    given once, when the candidates are made, and still shown after a move that reuses them;
    a ZOGY warning still holds for a catalog re-made from that run's result."""
    from toolkit import Exposure

    m = stack.psf_matched_warps[2]
    level = np.float32(6 * np.sqrt(np.nanmedian(m.variance)))
    direct, matched = list(stack.direct_warps), list(stack.psf_matched_warps)
    for ws in (direct, matched):
        w = ws[2]
        ws[2] = Exposure(w.image + level, w.variance, w.mask, w.mask_planes, psf=w.psf, wcs=w.wcs)
    clean = widgets.CompareWarpExplorer(CompareWarpModel(stack.direct_warps, stack.psf_matched_warps))
    assert clean.model.notes == [] and clean.notes.value == ""
    with pytest.warns(UserWarning, match="epoch 2"):
        ex = widgets.CompareWarpExplorer(CompareWarpModel(direct, matched))
    assert len(ex.model.notes) == 1 and ex.model.notes[0].startswith("SkyOffsetWarning: 1 of 10 PSF-matched warps")
    assert "epoch 2: +" in ex.notes.value and "⚠" in ex.notes.value
    runs = dict(ex.model.pipeline.run_counts)
    ex.epoch_slider.value = 4  # reuses the candidates: no new warning, the note stays
    assert ex.model.pipeline.run_counts == runs and ex.model.version == 2
    assert len(ex.model.notes) == 1 and "epoch 2: +" in ex.notes.value

    small = simulate_pair(size=128, seed=2)
    with pytest.warns(RuntimeWarning, match="is uncertain"):
        zm = ZogyModel(small.science, small.reference, {"doMeasureNoiseCorrelation": True})
    zx = widgets.ZogyExplorer(zm)
    assert [n.split(":")[0] for n in zm.notes] == ["RuntimeWarning"] and "is uncertain" in zx.notes.value
    zm.config.transientThreshold = 8.0  # the catalog only: ZOGY does not run, its warning holds
    assert zm.zogy_runs == 1 and "is uncertain" in zx.notes.value
    zm.config.doMeasureNoiseCorrelation = False  # a run without the warning clears it
    assert zm.zogy_runs == 2 and zm.notes == [] and zx.notes.value == ""
