"""CompareWarp, ZOGY and pipeline explorers: linked Bokeh panels in one BokehModel, in ipywidgets.

Each explorer is a view over a model of :mod:`toolkit.models`: it watches ``model.version`` and
re-renders only the panels whose inputs are in ``model.changed``; display settings (interval,
stretch, colormap, mask palette) re-render without touching the engine.  Every panel update
assigns one screen-resolution uint8 buffer to its ColumnDataSource (see :mod:`widgets.display`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ipywidgets as ipw
import numpy as np
import param
from bokeh import events
from bokeh.layouts import gridplot
from bokeh.models import ColorBar, ColumnDataSource, Legend, LegendItem, LinearColorMapper, Range1d
from bokeh.palettes import Category10, Greys256, Inferno256, RdBu, Viridis256
from bokeh.plotting import figure
from jupyter_bokeh import BokehModel

from toolkit.models import CompareWarpModel, PipelineModel, ZogyModel

from .controls import config_controls, widget_for
from .display import AFW_MASK_COLORS, CB_SAFE_MASK_COLORS, block_factor, limits, reduce_block, stretch_uint8

__all__ = ["DisplaySettings", "CompareWarpExplorer", "ZogyExplorer", "PipelineExplorer", "load_bokehjs"]

_CMAPS = {"greys": Greys256, "viridis": Viridis256, "inferno": Inferno256}
_DIVERGING = list(reversed(RdBu[11]))  # blue negative, red positive
_loaded = [False]


def load_bokehjs() -> None:
    """Load BokehJS inline into the notebook once (required before any BokehModel renders offline)."""
    if _loaded[0]:
        return
    try:
        from IPython import get_ipython

        if get_ipython() is None:
            return
    except ImportError:
        return
    from bokeh.io import output_notebook
    from bokeh.resources import INLINE

    output_notebook(resources=INLINE, hide_banner=True)
    _loaded[0] = True


class DisplaySettings(param.Parameterized):
    """How images are shown (cheap: changes never touch the engine)."""

    interval = param.Selector(default="zscale", objects=["zscale", "percentile", "minmax"], doc="Display limits.")
    stretch = param.Selector(default="asinh", objects=["linear", "asinh"], doc="Intensity stretch.")
    cmap = param.Selector(default="greys", objects=list(_CMAPS), doc="Colormap of the image panels.")
    mask_palette = param.Selector(default="afw", objects=["afw", "colorblind"], doc="Mask-plane colours.")
    # 360 px: a buffer of at most 360^2 bytes is <= 2x the 260^2 screen pixels of a panel
    max_pixels = param.Integer(default=360, bounds=(64, 4096), doc="Largest buffer side sent to the browser.")


def _image_source() -> ColumnDataSource:
    return ColumnDataSource(data={"image": [np.zeros((1, 1), np.uint8)], "x": [0.0], "y": [0.0], "dw": [1.0], "dh": [1.0]})


class _PanelExplorer:
    """Shared machinery: figures with shared ranges, image sources, mappers, render bookkeeping."""

    panel_size = 260

    def __init__(self, shape: tuple[int, int], xy0: tuple[int, int], display: DisplaySettings | None) -> None:
        self.display = display or DisplaySettings()
        self.shape, self.xy0 = shape, xy0
        ny, nx = shape
        x0, y0 = xy0
        self.x_range = Range1d(x0 - 0.5, x0 + nx - 0.5, bounds=(x0 - 0.5, x0 + nx - 0.5))
        self.y_range = Range1d(y0 - 0.5, y0 + ny - 0.5, bounds=(y0 - 0.5, y0 + ny - 0.5))
        self.sources: dict[str, ColumnDataSource] = {}
        self.mappers: dict[str, LinearColorMapper] = {}
        self.figures: dict[str, Any] = {}
        self.render_count = 0
        self.bytes_sent: dict[str, int] = {}
        self.display.param.watch(self._display_changed, ["interval", "stretch", "max_pixels", "mask_palette"])
        self.display.param.watch(self._cmap_changed, ["cmap"])

    def _figure(self, name: str, title: str, palette=None, colorbar: bool = False):
        f = figure(title=title, x_range=self.x_range, y_range=self.y_range, frame_width=self.panel_size, frame_height=self.panel_size,
                   tools="pan,wheel_zoom,box_zoom,reset,tap,save", active_scroll="wheel_zoom", toolbar_location="above")
        src = _image_source()
        mapper = LinearColorMapper(palette=palette or _CMAPS[self.display.cmap], low=0, high=254, high_color=(0, 0, 0, 0))
        f.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper)
        if colorbar:
            f.add_layout(ColorBar(color_mapper=mapper, width=8), "right")
        f.on_event(events.Tap, self._tap)
        self.sources[name], self.mappers[name], self.figures[name] = src, mapper, f
        return f

    def _assign(self, name: str, buf: np.ndarray, factor: int) -> None:
        ny, nx = self.shape
        self.sources[name].data = {"image": [buf], "x": [self.xy0[0] - 0.5], "y": [self.xy0[1] - 0.5], "dw": [float(nx)], "dh": [float(ny)]}
        self.bytes_sent[name] = int(buf.nbytes)

    def _image(self, name: str, arr: np.ndarray, how: str = "mean", symmetric: bool = False, fixed: tuple[float, float] | None = None) -> None:
        d = self.display
        k = block_factor(arr.shape, d.max_pixels)
        red = reduce_block(arr, k, how)
        lo, hi = fixed if fixed is not None else limits(red, d.interval, symmetric)
        self._assign(name, stretch_uint8(red, lo, hi, "linear" if symmetric or fixed else d.stretch), k)
        self.limits = getattr(self, "limits", {})
        self.limits[name] = (lo, hi)

    def _wrap(self, grid) -> None:
        """Render, then wrap the layout in one BokehModel (its initial bundle must carry the images)."""
        if self.model.outputs:
            self.render(None)
        self.bokeh = BokehModel(grid, combine_events=True)
        self.bokeh.add_class("ds-bokeh")
        self.status = ipw.HTML()
        self.status.add_class("ds-status")

    def _watch_model(self) -> None:
        self.model.param.watch(lambda *_: self.render(set(self.model.changed)), ["version"])
        self.model.param.watch(lambda *_: self._set_status(), ["status", "busy", "version"])
        self._set_status()

    def _controls_column(self) -> ipw.VBox:
        return ipw.VBox([self.controls], layout=ipw.Layout(width="360px", min_width="360px"))

    def _cmap_changed(self, *_: Any) -> None:
        for name, m in self.mappers.items():
            if name in self._greyscale_panels:
                m.palette = _CMAPS[self.display.cmap]

    def _display_changed(self, *_: Any) -> None:
        self.render(None)

    def _tap(self, event) -> None:  # overridden where a click means something
        pass

    _greyscale_panels: tuple[str, ...] = ()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        load_bokehjs()
        display(self.widget)


class CompareWarpExplorer(_PanelExplorer):
    """Coadd (with mask planes), template, selected epoch's warpDiff with its candidates, epoch count.

    Parameters
    ----------
    model : CompareWarpModel
    display : DisplaySettings, optional
    """

    _greyscale_panels = ("coadd", "template", "warp")

    def __init__(self, model: CompareWarpModel, display: DisplaySettings | None = None) -> None:
        w0 = model.pipeline.direct_warps[0]
        super().__init__(w0.shape, w0.xy0, display)
        self.model = model
        n = model.n_epochs
        f_coadd = self._figure("coadd", "CompareWarp coadd")
        f_tmpl = self._figure("template", "static-sky template (PSF-matched)")
        f_diff = self._figure("warp_diff", "warpDiff of the selected epoch", palette=_DIVERGING, colorbar=True)
        count_pal = ["#ffffff"] + list(Viridis256[:: max(1, 256 // max(n, 1))])[:n]
        f_count = self._figure("epoch_count", "epoch count", palette=count_pal, colorbar=False)
        self.mappers["epoch_count"].update(low=-0.5, high=n + 0.5)
        f_count.add_layout(ColorBar(color_mapper=self.mappers["epoch_count"], width=8, major_label_text_font_size="8pt"), "right")
        # candidate footprints of the selected epoch, drawn over the warpDiff
        self.sources["candidates"] = _image_source()
        cmap = LinearColorMapper(palette=["#00ff00"], low=0.5, high=1, low_color=(0, 0, 0, 0), high_color="#00ff00")
        f_diff.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.sources["candidates"], color_mapper=cmap, global_alpha=0.35)
        self._mask_renderers: dict[str, Any] = {}
        self._add_mask_layers(f_coadd)
        # per-epoch values at a clicked pixel
        self.series_source = ColumnDataSource(data={"epoch": [], "value": [], "lo": [], "hi": [], "color": []})
        f_series = figure(title="click a pixel: value ± σ per epoch (red = clipped, grey = not used)", frame_width=2 * self.panel_size + 60, frame_height=140, tools="")
        f_series.segment(x0="epoch", x1="epoch", y0="lo", y1="hi", color="color", source=self.series_source)
        f_series.scatter(x="epoch", y="value", color="color", size=7, source=self.series_source)
        self.figures["series"] = f_series
        grid = gridplot([[f_coadd, f_tmpl], [f_diff, f_count], [f_series, None]], merge_tools=False)
        self._wrap(grid)
        # controls
        self.epoch_slider = widget_for(model, "epoch", label="epoch")
        self.export_format = ipw.Dropdown(options=["pex", "yaml"], value="pex", description="format")
        self.export_path = ipw.Text(value="compare_warp_override.py", description="file")
        self.export_button = ipw.Button(description="Export config", icon="download")
        self.export_button.add_class("ds-export")
        self.export_text = ipw.Textarea(layout=ipw.Layout(width="100%", height="140px"))
        self.export_button.on_click(lambda _: self.export_config())
        self.save_button = ipw.Button(description="Save coadd FITS", icon="save")
        self.save_button.on_click(lambda _: self.save_fits())
        disp = ipw.HBox([widget_for(self.display, n) for n in ("interval", "stretch", "cmap", "mask_palette")])
        self.controls = config_controls(model.config, "CompareWarp")
        self.widget = ipw.VBox([
            ipw.HBox([self.epoch_slider, self.status]), disp,
            ipw.HBox([self._controls_column(), self.bokeh]),
            ipw.HBox([self.export_format, self.export_path, self.export_button, self.save_button]), self.export_text,
        ])
        self.widget.add_class("ds-compare-warp-explorer")
        self._watch_model()

    # ------------------------------------------------------------------ rendering
    def _add_mask_layers(self, fig) -> None:
        planes = self.model.pipeline.direct_warps[0].mask_planes.copy()
        for p in ("CLIPPED", "REJECTED", "SENSOR_EDGE", "INEXACT_PSF", "NO_DATA", "INTRP"):
            planes.add(p)
        items = []
        for i, (name, _bit) in enumerate(planes.items()):
            src = _image_source()
            color = self._mask_color(name, i)
            mapper = LinearColorMapper(palette=[color], low=0.5, high=1, low_color=(0, 0, 0, 0), high_color=color)
            r = fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper, global_alpha=0.3)
            r.visible = name in ("CLIPPED", "SAT", "BAD", "NO_DATA")
            # image glyphs draw no legend swatch: add an off-screen square in the plane colour
            sw = fig.scatter(x=[np.nan], y=[np.nan], marker="square", color=color, size=8)
            sw.visible = r.visible
            r.js_link("visible", sw, "visible")
            items.append(LegendItem(label=name, renderers=[r, sw]))
            self.sources[f"mask:{name}"] = src
            self.mappers[f"mask:{name}"] = mapper
            self._mask_renderers[name] = r
        legend = Legend(items=items, click_policy="hide", label_text_font_size="7pt", glyph_height=10, spacing=0, padding=2)
        fig.add_layout(legend, "right")

    def _mask_color(self, name: str, i: int) -> str:
        if self.display.mask_palette == "afw":
            return AFW_MASK_COLORS.get(name, Category10[10][i % 10])
        return CB_SAFE_MASK_COLORS[i % len(CB_SAFE_MASK_COLORS)]

    def render(self, changed: set[str] | None) -> None:
        """Re-render the panels whose inputs changed (all when ``changed`` is None)."""
        out = self.model.outputs
        if not out:
            return
        need = _needs(changed)

        bk = getattr(self, "bokeh", None)
        with bk.hold_sync() if bk is not None else _null():
            if need("coadd"):
                c = out["coadd"]
                self._image("coadd", c.image)
                k = block_factor(c.shape, self.display.max_pixels)
                red = reduce_block(c.mask, k, "or")
                for i, name in enumerate(self._mask_renderers):
                    if name in c.mask_planes:
                        layer = (red & np.int32(c.mask_planes.bitmask([name]))) != 0
                        # an empty plane ships one pixel, not a screen-sized buffer of zeros
                        self._assign(f"mask:{name}", layer.astype(np.uint8) if layer.any() else np.zeros((1, 1), np.uint8), k)
                    if changed is None:
                        col = self._mask_color(name, i)
                        self.mappers[f"mask:{name}"].update(palette=[col], high_color=col)
            if need("template"):
                self._image("template", out["template"].image)
            if need("warp_diff", "candidates"):
                d = out["warp_diff"]
                if d is not None:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        z = d.image / np.sqrt(d.variance)
                    self._image("warp_diff", z, how="absmax", fixed=(-10.0, 10.0))
                    k = block_factor(d.shape, self.display.max_pixels)
                    self._assign("candidates", (reduce_block(out["candidates"], k, "max") > 0).astype(np.uint8), k)
                self.figures["warp_diff"].title.text = f"warpDiff / σ, epoch {out['epoch']} (green: candidates)"
            if need("epoch_count"):
                ec = out["epoch_count"]
                k = block_factor(ec.shape, self.display.max_pixels)
                self._assign("epoch_count", np.clip(reduce_block(ec, k, "max"), 0, 254).astype(np.uint8), k)
                self.mappers["epoch_count"].update(low=-0.5, high=self.model.n_epochs + 0.5)
        self.render_count += 1

    def _tap(self, event) -> None:
        x, y = int(np.floor(event.x + 0.5)), int(np.floor(event.y + 0.5))
        try:
            s = self.model.pixel_series(x, y)
        except Exception:
            return
        color = np.where(s["clipped"], "red", np.where(s["used"], "black", "grey"))
        self.series_source.data = {"epoch": s["epoch"], "value": s["value"], "lo": s["value"] - s["sigma"], "hi": s["value"] + s["sigma"], "color": list(color)}
        self.figures["series"].title.text = f"pixel ({x}, {y}): value ± σ per epoch (red = clipped, grey = not used)"

    def _set_status(self) -> None:
        m = self.model
        rc = m.outputs.get("run_counts", {})
        self.status.value = f"<b>{'⏳ ' if m.busy else ''}{m.status}</b> · version {m.version} · stage runs " + ", ".join(f"{k} {v}" for k, v in rc.items())

    # ------------------------------------------------------------------ actions
    def export_config(self, path: str | None = None, fmt: str | None = None) -> str:
        """Write the config as a pipetask override (pex) or YAML; also shown in the text area."""
        fmt = fmt or self.export_format.value
        path = path or self.export_path.value
        cfg = self.model.config
        text = cfg.to_pex_override(label="assembleCoadd", path=path) if fmt == "pex" else cfg.to_yaml(path=path)
        self.export_text.value = text
        return text

    def save_fits(self, path: str = "coadd.fits") -> Path:
        from toolkit.io import write_exposure

        return write_exposure(self.model.outputs["coadd"], path)


class ZogyExplorer(_PanelExplorer):
    """Science, template, difference (D / F_D) and Scorr, with the transient catalog as markers."""

    _greyscale_panels = ("science", "template")

    def __init__(self, model: ZogyModel, display: DisplaySettings | None = None) -> None:
        super().__init__(model.science.shape, model.science.xy0, display)
        self.model = model
        f_sci = self._figure("science", "science")
        f_tmpl = self._figure("template", "template")
        f_diff = self._figure("diff", "difference D / F_D", palette=_DIVERGING, colorbar=True)
        f_scorr = self._figure("scorr", "Scorr", palette=_DIVERGING, colorbar=True)
        self.catalog_source = ColumnDataSource(data={"x": [], "y": [], "scorr": []})
        f_scorr.scatter(x="x", y="y", source=self.catalog_source, marker="circle", size=14, fill_color=None, line_color="lime", line_width=1.5)
        f_diff.scatter(x="x", y="y", source=self.catalog_source, marker="circle", size=14, fill_color=None, line_color="lime", line_width=1.5)
        grid = gridplot([[f_sci, f_tmpl], [f_diff, f_scorr]], merge_tools=False)
        self._wrap(grid)
        disp = ipw.HBox([widget_for(self.display, n) for n in ("interval", "stretch", "cmap")])
        self.controls = config_controls(model.config, "ZOGY")
        self.widget = ipw.VBox([self.status, disp, ipw.HBox([self._controls_column(), self.bokeh])])
        self.widget.add_class("ds-zogy-explorer")
        self._watch_model()

    def render(self, changed: set[str] | None) -> None:
        out = self.model.outputs
        if not out:
            return
        need = _needs(changed)

        if need("science"):
            self._image("science", out["science"].image)
        if need("template"):
            self._image("template", out["template"].image)
        if need("diff"):
            d = out["diff"]
            with np.errstate(invalid="ignore", divide="ignore"):
                self._image("diff", d.image / np.sqrt(d.variance), how="absmax", fixed=(-6.0, 6.0))
        if need("scorr") and out["scorr"] is not None:
            self._image("scorr", out["scorr"], how="absmax", fixed=(-6.0, 6.0))
        if need("catalog"):
            cat = out["catalog"]
            self.catalog_source.data = {"x": list(np.asarray(cat["x"], float)), "y": list(np.asarray(cat["y"], float)), "scorr": list(np.asarray(cat["scorr"], float))}
        self.render_count += 1

    def _set_status(self) -> None:
        m = self.model
        n = len(m.outputs["catalog"]) if m.outputs else 0
        self.status.value = f"<b>{'⏳ ' if m.busy else ''}{m.status}</b> · version {m.version} · {n} transient candidates"


class PipelineExplorer:
    """CompareWarp explorer for the template stack above a ZOGY explorer of the chosen science epoch."""

    def __init__(self, model: PipelineModel) -> None:
        self.model = model
        self.coadd = CompareWarpExplorer(model.coadd_model)
        self.zogy = ZogyExplorer(model.zogy_model)
        self.science_slider = widget_for(model, "science_epoch", label="science epoch")
        self.widget = ipw.VBox([self.coadd.widget, ipw.HTML("<h4>ZOGY: science epoch − CompareWarp coadd</h4>"), self.science_slider, self.zogy.widget])
        self.widget.add_class("ds-pipeline-explorer")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        load_bokehjs()
        display(self.widget)


def _needs(changed: set[str] | None):
    """``need(*outputs)``: True when any of them changed (everything when ``changed`` is None)."""
    return lambda *names: changed is None or bool(changed & set(names))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
