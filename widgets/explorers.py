"""CompareWarp, ZOGY and pipeline explorers: linked Bokeh panels in one BokehModel, in ipywidgets.

Each explorer is a view over a model of :mod:`toolkit.models`: it watches ``model.version`` and
re-renders only the panels whose inputs are in ``model.changed``; display settings (interval,
stretch, colormap, mask palette) re-render without touching the engine.  Every panel update
assigns one screen-resolution uint8 buffer to its ColumnDataSource (see :mod:`widgets.display`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import ipywidgets as ipw
import numpy as np
import param
from bokeh import events
from bokeh.layouts import gridplot
from bokeh.models import ColorBar, ColumnDataSource, CustomJSHover, HoverTool, Legend, LegendItem, LinearColorMapper, Range1d
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
    # the panel's own 260 px: an image layer plus a packed mask page (or the candidates) is then
    # at most 2 bytes per screen pixel; zooming re-cuts the visible window at this resolution
    max_pixels = param.Integer(default=260, bounds=(64, 4096), doc="Largest buffer side sent to the browser (per visible window).")


def _image_source() -> ColumnDataSource:
    return ColumnDataSource(data={"image": [np.zeros((1, 1), np.uint8)], "x": [0.0], "y": [0.0], "dw": [1.0], "dh": [1.0], "ny": [1], "nx": [1], "lo": [0.0], "hi": [1.0], "stretch": ["linear"]})


# uint8 grey level -> value: invert stretch_uint8 (0..254 over [lo, hi]; 255 is NaN)
_VALUE_JS = """
const lo = src.data.lo[0], hi = src.data.hi[0], st = src.data.stretch[0];
if (value == 255) { return "NaN"; }
let t = value / 254;
if (st == "asinh") { t = 0.1 * Math.sinh(t * Math.asinh(1 / 0.1)); }
const v = lo + t * (hi - lo);
return (value == 0 ? "<= " : value == 254 ? ">= " : "~ ") + v.toPrecision(4);
"""

# names of the mask planes set under the cursor, read from the packed pages
_MASKS_JS = """
const out = [];
for (let p = 0; p < pages.length; p++) {
  const d = pages[p].data, img = d.image[0];
  const shape = [d.ny[0], d.nx[0]];
  if (shape[0] * shape[1] <= 1) { continue; }
  const j = Math.floor((special_vars.x - d.x[0]) / d.dw[0] * shape[1]);
  const i = Math.floor((special_vars.y - d.y[0]) / d.dh[0] * shape[0]);
  if (i < 0 || j < 0 || i >= shape[0] || j >= shape[1]) { continue; }
  const v = img[i * shape[1] + j];
  for (let b = 0; b < names[p].length; b++) { if ((v >> b) & 1) { out.push(names[p][b]); } }
}
return out.length ? out.join(" ") : "-";
"""

# gnomonic (TAN) deprojection of the cursor position with the WCS's CRPIX/CRVAL/CD
_RADEC_JS = """
if (!w.cd) { return "(no WCS)"; }
const dx = special_vars.x - w.crpix[0], dy = special_vars.y - w.crpix[1];
const xi = (w.cd[0] * dx + w.cd[1] * dy) * Math.PI / 180, eta = (w.cd[2] * dx + w.cd[3] * dy) * Math.PI / 180;
const a0 = w.crval[0] * Math.PI / 180, d0 = w.crval[1] * Math.PI / 180;
const den = Math.cos(d0) - eta * Math.sin(d0);
let ra = (a0 + Math.atan2(xi, den)) * 180 / Math.PI;
const dec = Math.atan2(Math.sin(d0) + eta * Math.cos(d0), Math.hypot(xi, den)) * 180 / Math.PI;
ra = (ra + 360) % 360;
return ra.toFixed(6) + ", " + dec.toFixed(6);
"""


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
        self.limits: dict[str, tuple[float, float]] = {}
        self.view = (0, nx, 0, ny)  # visible window in array indices: x0, x1, y0, y1
        self._pending = None
        self.wcs = None
        self.display.param.watch(self._display_changed, ["interval", "stretch", "max_pixels", "mask_palette"])
        self.display.param.watch(self._cmap_changed, ["cmap"])

    def _figure(self, name: str, title: str, palette=None, colorbar: bool = False, hover: bool = True):
        f = figure(title=title, x_range=self.x_range, y_range=self.y_range, frame_width=self.panel_size, frame_height=self.panel_size,
                   tools="pan,wheel_zoom,box_zoom,reset,tap,save", active_scroll="wheel_zoom", toolbar_location="above")
        src = _image_source()
        mapper = LinearColorMapper(palette=palette or _CMAPS[self.display.cmap], low=0, high=254, high_color=(0, 0, 0, 0))
        r = f.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper)
        if colorbar:
            f.add_layout(ColorBar(color_mapper=mapper, width=8), "right")
        f.on_event(events.Tap, self._tap)
        f.on_event(events.RangesUpdate, self._ranges_updated)
        self.sources[name], self.mappers[name], self.figures[name] = src, mapper, f
        self._renderers = getattr(self, "_renderers", {})
        self._renderers[name] = r
        if hover:
            self._add_hover(name)
        return f

    def _add_hover(self, name: str) -> None:
        tool = HoverTool(renderers=[self._renderers[name]], tooltips=self._tooltips(name), formatters=self._formatters(name, self.sources[name]))
        self.figures[name].add_tools(tool)

    # ------------------------------------------------------------------ hover
    def _tooltips(self, name: str) -> list[tuple[str, str]]:
        tips = [("x, y", "$x{0}, $y{0}"), ("value", "@image{custom}")]
        # the custom readouts are keyed on the screen-coordinate variables so that $x/$y keep
        # their plain formatting; their code reads the data position from special_vars
        if name == "coadd":
            tips.append(("masks", "$sx{custom}"))
        tips.append(("RA, Dec", "$sy{custom}"))
        return tips

    def _formatters(self, name: str, src: ColumnDataSource) -> dict[str, CustomJSHover]:
        """The pixel value is decoded in the browser from the uint8 buffer by inverting the panel's
        stretch (exact to half a grey level), so hovering needs no float buffer and no round trip."""
        f = {"@image": CustomJSHover(args=dict(src=src), code=_VALUE_JS)}
        if name == "coadd":
            f["$sx"] = CustomJSHover(args=dict(pages=[self.sources[f"mask:{i}"] for i in range(len(self._mask_pages))], names=self._mask_pages), code=_MASKS_JS)
        f["$sy"] = CustomJSHover(args=dict(w=self._wcs_args()), code=_RADEC_JS)
        return f

    def _wcs_args(self) -> dict[str, Any]:
        """CRPIX/CRVAL/CD of a TAN WCS for the browser's RA/Dec readout (empty: none shown)."""
        w = self.wcs
        if w is None or w.naxis < 2 or not all("TAN" in w.wcs.ctype[i] for i in (0, 1)):
            return {}
        cd = w.pixel_scale_matrix
        # FITS CRPIX is 1-based; the panels use 0-based parent pixels
        return {"crpix": [float(w.wcs.crpix[i]) - 1.0 for i in (0, 1)], "crval": [float(w.wcs.crval[i]) for i in (0, 1)], "cd": [float(v) for v in np.asarray(cd)[:2, :2].ravel()]}

    # ------------------------------------------------------------------ view window
    def _window_slices(self) -> tuple[slice, slice]:
        x0, x1, y0, y1 = self.view
        return slice(y0, y1), slice(x0, x1)

    def _window_factor(self) -> int:
        x0, x1, y0, y1 = self.view
        return block_factor((y1 - y0, x1 - x0), self.display.max_pixels)

    def _reduce(self, arr: np.ndarray, how: str) -> np.ndarray:
        """The visible window of ``arr`` reduced to at most ``max_pixels`` per side."""
        return reduce_block(arr[self._window_slices()], self._window_factor(), how)

    def set_view(self, x0: float, x1: float, y0: float, y1: float) -> None:
        """Show parent-pixel window [x0, x1] x [y0, y1]: re-cut every panel at screen resolution."""
        ny, nx = self.shape
        ox, oy = self.xy0
        ix0, ix1 = int(np.clip(np.floor(x0 + 0.5 - ox), 0, nx - 1)), int(np.clip(np.ceil(x1 + 0.5 - ox), 1, nx))
        iy0, iy1 = int(np.clip(np.floor(y0 + 0.5 - oy), 0, ny - 1)), int(np.clip(np.ceil(y1 + 0.5 - oy), 1, ny))
        view = (ix0, max(ix1, ix0 + 1), iy0, max(iy1, iy0 + 1))
        if view != self.view:
            self.view = view
            self.render(None)

    def _ranges_updated(self, event) -> None:
        """Zoom/pan: re-cut after 0.3 s without further range changes (one re-cut per gesture)."""
        if None in (event.x0, event.x1, event.y0, event.y1):
            return
        args = (event.x0, event.x1, event.y0, event.y1)
        try:
            import asyncio

            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (headless use): re-cut now
            self.set_view(*args)
            return
        if self._pending is not None:
            self._pending.cancel()
        self._pending = loop.call_later(0.3, lambda: self.set_view(*args))

    def _assign(self, name: str, buf: np.ndarray, factor: int | None = None, extra: dict[str, Any] | None = None) -> None:
        """Ship ``buf`` covering the visible window (``factor`` pixels per buffer pixel)."""
        x0, x1, y0, y1 = self.view
        if factor is None or buf.shape == (1, 1):
            dw, dh = float(x1 - x0), float(y1 - y0)
        else:
            dw, dh = float(buf.shape[1] * factor), float(buf.shape[0] * factor)
        data = {"image": [buf], "x": [self.xy0[0] + x0 - 0.5], "y": [self.xy0[1] + y0 - 0.5], "dw": [dw], "dh": [dh], "ny": [buf.shape[0]], "nx": [buf.shape[1]]}
        data.update(extra or {})
        self.sources[name].data = data
        self.bytes_sent[name] = int(buf.nbytes)

    def _image(self, name: str, arr: np.ndarray, how: str = "mean", symmetric: bool = False, fixed: tuple[float, float] | None = None) -> None:
        d = self.display
        red = self._reduce(arr, how)
        lo, hi = fixed if fixed is not None else limits(red, d.interval, symmetric)
        stretch = "linear" if symmetric or fixed else d.stretch
        self._assign(name, stretch_uint8(red, lo, hi, stretch), self._window_factor(), {"lo": [lo], "hi": [hi], "stretch": [stretch]})
        self.limits[name] = (lo, hi)

    def _wrap(self, grid) -> None:
        """Render, then wrap the layout in one BokehModel (its initial bundle must carry the images)."""
        if self.model.outputs:
            self.render(None)
        self.bokeh = BokehModel(grid, combine_events=True)
        self.bokeh.add_class("ds-bokeh")
        self.status = ipw.HTML()
        self.status.add_class("ds-status")
        # the model's warnings: given inside a widget's callback, a warning reaches no cell
        self.notes = ipw.HTML()
        self.notes.add_class("ds-notes")

    def _watch_model(self) -> None:
        self.model.param.watch(lambda *_: self.render(set(self.model.changed)), ["version"])
        self.model.param.watch(lambda *_: self._set_status(), ["status", "busy", "version"])
        self.model.param.watch(lambda *_: self._set_notes(), ["notes"])
        self._set_status()
        self._set_notes()

    def _set_notes(self) -> None:
        notes = self.model.notes
        self.notes.value = "" if not notes else '<div style="color:#a04000">' + "<br>".join(f"⚠ {html.escape(n)}" for n in notes) + "</div>"

    #: the task label of the exported pex override (``config.<label>...``)
    _export_label = "task"

    def _export_row(self, default_path: str, save_description: str) -> list[Any]:
        """Export (pex/YAML, to a file and the text area) and save buttons: [row, text area]."""
        self.export_format = ipw.Dropdown(options=["pex", "yaml"], value="pex", description="format")
        self.export_path = ipw.Text(value=default_path, description="file")
        self.export_button = ipw.Button(description="Export config", icon="download")
        self.export_button.add_class("ds-export")
        self.export_text = ipw.Textarea(layout=ipw.Layout(width="100%", height="140px"))
        self.export_button.on_click(lambda _: self.export_config())
        self.save_button = ipw.Button(description=save_description, icon="save")
        self.save_button.on_click(lambda _: self.save_fits())
        return [ipw.HBox([self.export_format, self.export_path, self.export_button, self.save_button]), self.export_text]

    def export_config(self, path: str | None = None, fmt: str | None = None) -> str:
        """Write the config as a pipetask override (pex) or YAML; also shown in the text area."""
        fmt = fmt or self.export_format.value
        path = path or self.export_path.value
        cfg = self.model.config
        text = cfg.to_pex_override(label=self._export_label, path=path) if fmt == "pex" else cfg.to_yaml(path=path)
        self.export_text.value = text
        return text

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
    _export_label = "assembleCoadd"

    def __init__(self, model: CompareWarpModel, display: DisplaySettings | None = None) -> None:
        w0 = model.pipeline.direct_warps[0]
        super().__init__(w0.shape, w0.xy0, display)
        self.model = model
        self.wcs = w0.wcs
        n = model.n_epochs
        f_coadd = self._figure("coadd", "CompareWarp coadd", hover=False)
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
        self._add_hover("coadd")
        # per-epoch values at a clicked pixel
        self.series_source = ColumnDataSource(data={"epoch": [], "value": [], "lo": [], "hi": [], "color": []})
        f_series = figure(title="click a pixel: value ± σ per epoch (red = clipped, grey = not used)", frame_width=2 * self.panel_size + 60, frame_height=140, tools="")
        f_series.segment(x0="epoch", x1="epoch", y0="lo", y1="hi", color="color", source=self.series_source)
        f_series.scatter(x="epoch", y="value", color="color", size=7, source=self.series_source)
        self.figures["series"] = f_series
        # per-epoch cutouts around the clicked pixel: one mosaic buffer (red frame = clipped)
        ncut = self.cutout_size
        f_cut = figure(title="click a pixel: direct-warp cutouts per epoch", frame_width=2 * self.panel_size + 60, frame_height=max(60, int((2 * self.panel_size + 60) * ncut / (n * (ncut + 2)))),
                       x_range=Range1d(0, n * (ncut + 2)), y_range=Range1d(0, ncut + 2), tools="", toolbar_location=None)
        f_cut.axis.visible = False
        f_cut.grid.visible = False
        self.sources["cutouts"] = _image_source()
        f_cut.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.sources["cutouts"], color_mapper=LinearColorMapper(palette=Greys256, low=0, high=254, high_color=(0, 0, 0, 0)))
        self.cutout_frames = ColumnDataSource(data={"x": [], "y": [], "color": []})
        f_cut.rect(x="x", y="y", width=ncut + 1, height=ncut + 1, source=self.cutout_frames, fill_color=None, line_color="color", line_width=2)
        self.figures["cutouts"] = f_cut
        # blink: the template drawn on the coadd panel (its buffer is already in the browser)
        self._blink_renderer = f_coadd.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.sources["template"], color_mapper=self.mappers["template"], visible=False)
        grid = gridplot([[f_coadd, f_tmpl], [f_diff, f_count], [f_series, None], [f_cut, None]], merge_tools=False)
        self._wrap(grid)
        # controls
        self.epoch_slider = widget_for(model, "epoch", label="epoch")
        export_row = self._export_row("compare_warp_override.py", "Save coadd FITS")
        disp = ipw.HBox([widget_for(self.display, n) for n in ("interval", "stretch", "cmap", "mask_palette")])
        # blink coadd <-> template on the coadd panel (ipywidgets Play ticks; only visibility flips)
        self.blink = ipw.Play(value=0, min=0, max=1, step=1, interval=700, repeat=True, description="blink", tooltip="blink the coadd panel between coadd and template")
        self.blink.add_class("ds-blink")
        self.blink.observe(lambda ch: self.show_blink_frame(int(ch["new"])), names="value")
        self.controls = config_controls(model.config, "CompareWarp")
        self.widget = ipw.VBox([
            ipw.HBox([self.epoch_slider, self.status]), self.notes, ipw.HBox([disp, ipw.Label("blink coadd/template"), self.blink]),
            ipw.HBox([self._controls_column(), self.bokeh]), *export_row,
        ])
        self.widget.add_class("ds-compare-warp-explorer")
        self._watch_model()

    # ------------------------------------------------------------------ rendering
    def _add_mask_layers(self, fig) -> None:
        """One renderer per plane over *packed* sources: each uint8 page carries 8 planes as bits,
        and a plane's colour mapper is a 256-entry lookup table that is the plane colour where
        its bit is set and transparent elsewhere.  A panel's masks then cost 1 byte per screen
        pixel per 8 planes (one uint8 layer per plane cost 1 byte each), and the legend still
        toggles each plane in the browser.  Planes are paged in display priority, so the planes
        shown by default share page 0; a page none of whose planes is visible ships one pixel.
        """
        planes = self.model.pipeline.direct_warps[0].mask_planes.copy()
        for p in ("CLIPPED", "REJECTED", "SENSOR_EDGE", "INEXACT_PSF", "NO_DATA", "INTRP"):
            planes.add(p)
        names = sorted(list(planes), key=lambda n: (n not in _MASK_PRIORITY, _MASK_PRIORITY.index(n) if n in _MASK_PRIORITY else 0, n))
        self._mask_pages = [names[i : i + 8] for i in range(0, len(names), 8)]
        items = []
        for pg, page in enumerate(self._mask_pages):
            src = _image_source()
            self.sources[f"mask:{pg}"] = src
            for j, name in enumerate(page):
                color = self._mask_color(name, names.index(name))
                mapper = LinearColorMapper(palette=_bit_palette(color, j), low=-0.5, high=255.5)
                r = fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper, global_alpha=0.3)
                r.visible = name in _MASK_DEFAULT_VISIBLE
                # image glyphs draw no legend swatch: add an off-screen square in the plane colour
                sw = fig.scatter(x=[np.nan], y=[np.nan], marker="square", color=color, size=8)
                sw.visible = r.visible
                r.js_link("visible", sw, "visible")
                # a page whose planes were all hidden may hold one pixel: fetch it when shown
                r.on_change("visible", lambda attr, old, new: self._mask_visibility_changed())
                items.append(LegendItem(label=name, renderers=[r, sw]))
                self.mappers[f"mask:{name}"] = mapper
                self._mask_renderers[name] = r
        legend = Legend(items=items, click_policy="hide", label_text_font_size="7pt", glyph_height=10, spacing=0, padding=2)
        fig.add_layout(legend, "right")

    def _mask_visibility_changed(self) -> None:
        if self.model.outputs:
            self.render({"coadd_masks"})

    def mask_layer(self, plane: str) -> np.ndarray:
        """The screen buffer of one mask plane (bool), unpacked from its page (for tests/tools)."""
        for pg, page in enumerate(self._mask_pages):
            if plane in page:
                buf = self.sources[f"mask:{pg}"].data["image"][0]
                return (buf >> np.uint8(page.index(plane))) & 1 > 0
        raise KeyError(f"no mask plane {plane!r} in this explorer (planes: {sum(self._mask_pages, [])})")

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
                self._image("coadd", out["coadd"].image)
            if need("coadd", "coadd_masks"):
                self._render_masks(out["coadd"], recolor=changed is None)
            if need("template"):
                self._image("template", out["template"].image)
            if need("warp_diff", "candidates"):
                d = out["warp_diff"]
                if d is not None:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        z = d.image / np.sqrt(d.variance)
                    self._image("warp_diff", z, how="absmax", fixed=(-10.0, 10.0))
                    self._assign("candidates", (self._reduce(out["candidates"], "max") > 0).astype(np.uint8), self._window_factor())
                self.figures["warp_diff"].title.text = f"warpDiff / σ, epoch {out['epoch']} (green: candidates)"
            if need("epoch_count"):
                ec = out["epoch_count"]
                self._assign("epoch_count", np.clip(self._reduce(ec, "max"), 0, 254).astype(np.uint8), self._window_factor())
                self.mappers["epoch_count"].update(low=-0.5, high=self.model.n_epochs + 0.5)
        self.render_count += 1

    def _render_masks(self, c, recolor: bool = False) -> None:
        win = self._window_slices()
        red = reduce_block(c.mask[win], self._window_factor(), "or")
        names = sum(self._mask_pages, [])
        for pg, page in enumerate(self._mask_pages):
            packed = np.zeros(red.shape, np.uint8)
            for j, name in enumerate(page):
                if name in c.mask_planes:
                    packed |= (((red & np.int32(c.mask_planes.bitmask([name]))) != 0).astype(np.uint8) << np.uint8(j))
            shown = any(self._mask_renderers[n].visible for n in page)
            # an empty or hidden page ships one pixel, not a screen-sized buffer
            self._assign(f"mask:{pg}", packed if (shown and packed.any()) else np.zeros((1, 1), np.uint8), self._window_factor())
            if recolor:
                for j, name in enumerate(page):
                    self.mappers[f"mask:{name}"].palette = _bit_palette(self._mask_color(name, names.index(name)), j)

    cutout_size = 25

    def show_blink_frame(self, frame: int) -> None:
        """Frame 0: the coadd on the coadd panel; frame 1: the template in its place."""
        self._blink_renderer.visible = bool(frame % 2)
        self._renderers["coadd"].visible = not frame % 2
        self.figures["coadd"].title.text = "static-sky template (blink)" if frame % 2 else "CompareWarp coadd"

    def show_cutouts(self, x: int, y: int) -> None:
        """Mosaic of every epoch's direct warp around parent pixel (x, y), one common stretch."""
        p = self.model.pipeline
        w0 = p.direct_warps[0]
        h = self.cutout_size // 2
        ix, iy = x - w0.xy0[0], y - w0.xy0[1]
        ny, nx = w0.shape
        n = len(p.direct_warps)
        step = self.cutout_size + 2
        mosaic = np.full((self.cutout_size + 2, n * step), np.nan, np.float32)
        for e, w in enumerate(p.direct_warps):
            y0, y1, x0, x1 = max(iy - h, 0), min(iy + h + 1, ny), max(ix - h, 0), min(ix + h + 1, nx)
            cut = w.image[y0:y1, x0:x1]
            oy, ox = 1 + y0 - (iy - h), e * step + 1 + x0 - (ix - h)
            mosaic[oy : oy + cut.shape[0], ox : ox + cut.shape[1]] = cut
        lo, hi = limits(mosaic, "zscale")
        buf = stretch_uint8(mosaic, lo, hi, "linear")
        self.sources["cutouts"].data = {"image": [buf], "x": [0.0], "y": [0.0], "dw": [float(n * step)], "dh": [float(step)], "ny": [buf.shape[0]], "nx": [buf.shape[1]], "lo": [lo], "hi": [hi], "stretch": ["linear"]}
        clipped = [bool(m["CLIPPED"][iy, ix]) for m in p.artifact_masks]
        self.cutout_frames.data = {"x": [e * step + step / 2 for e in range(n) if clipped[e]], "y": [step / 2] * sum(clipped), "color": ["red"] * sum(clipped)}
        self.figures["cutouts"].title.text = f"direct-warp cutouts at ({x}, {y}), epochs 0..{n - 1} (red frame = clipped there)"

    def _tap(self, event) -> None:
        x, y = int(np.floor(event.x + 0.5)), int(np.floor(event.y + 0.5))
        try:
            s = self.model.pixel_series(x, y)
        except Exception:
            return
        self.show_cutouts(x, y)
        color = np.where(s["clipped"], "red", np.where(s["used"], "black", "grey"))
        self.series_source.data = {"epoch": s["epoch"], "value": s["value"], "lo": s["value"] - s["sigma"], "hi": s["value"] + s["sigma"], "color": list(color)}
        self.figures["series"].title.text = f"pixel ({x}, {y}): value ± σ per epoch (red = clipped, grey = not used)"

    def _set_status(self) -> None:
        m = self.model
        rc = m.outputs.get("run_counts", {})
        self.status.value = f"<b>{'⏳ ' if m.busy else ''}{m.status}</b> · version {m.version} · stage runs " + ", ".join(f"{k} {v}" for k, v in rc.items())

    # ------------------------------------------------------------------ actions
    def save_fits(self, path: str = "coadd.fits") -> Path:
        from toolkit.io import write_exposure

        return write_exposure(self.model.outputs["coadd"], path)


#: mask planes that make a catalog entry suspect in the ZOGY explorer (drawn orange)
_FLAGGED_PLANES = ("BAD", "SAT", "NO_DATA", "CR", "EDGE", "SUSPECT")


class ZogyExplorer(_PanelExplorer):
    """Science, template, difference (D / F_D) and Scorr, with the transient catalog as markers."""

    _greyscale_panels = ("science", "template")
    _export_label = "zogy"

    def __init__(self, model: ZogyModel, display: DisplaySettings | None = None) -> None:
        super().__init__(model.science.shape, model.science.xy0, display)
        self.model = model
        self.wcs = model.science.wcs
        f_sci = self._figure("science", "science")
        f_tmpl = self._figure("template", "template")
        f_diff = self._figure("diff", "difference D / F_D", palette=_DIVERGING, colorbar=True)
        f_scorr = self._figure("scorr", "Scorr", palette=_DIVERGING, colorbar=True)
        # entries whose peak sits on a flagged pixel (bad, saturated, cosmic ray, edge) are drawn
        # in orange: the catalog keeps them, the eye should not trust them
        self.catalog_source = ColumnDataSource(data={"x": [], "y": [], "scorr": [], "color": []})
        f_scorr.scatter(x="x", y="y", source=self.catalog_source, marker="circle", size=14, fill_color=None, line_color="color", line_width=1.5)
        f_diff.scatter(x="x", y="y", source=self.catalog_source, marker="circle", size=14, fill_color=None, line_color="color", line_width=1.5)
        grid = gridplot([[f_sci, f_tmpl], [f_diff, f_scorr]], merge_tools=False)
        self._wrap(grid)
        disp = ipw.HBox([widget_for(self.display, n) for n in ("interval", "stretch", "cmap")])
        self.controls = config_controls(model.config, "ZOGY")
        self.widget = ipw.VBox([
            self.status, self.notes, disp, ipw.HBox([self._controls_column(), self.bokeh]),
            *self._export_row("zogy_override.py", "Save diff + score FITS"),
        ])
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
            flagged = out["diff"].mask_planes.bitmask(_FLAGGED_PLANES, strict=False)
            colors = ["orange" if int(m) & flagged else "lime" for m in np.asarray(cat["mask"])]
            self.catalog_source.data = {"x": list(np.asarray(cat["x"], float)), "y": list(np.asarray(cat["y"], float)), "scorr": list(np.asarray(cat["scorr"], float)), "color": colors}
        self.render_count += 1

    def save_fits(self, prefix: str = "zogy") -> tuple[Path, Path, Path]:
        """Write ``{prefix}_diff.fits``, ``{prefix}_score.fits`` and the catalog ``{prefix}_catalog.ecsv``."""
        from toolkit.io import write_exposure

        out = self.model.outputs
        diff = write_exposure(out["diff"], f"{prefix}_diff.fits")
        score = write_exposure(out["score"], f"{prefix}_score.fits") if out.get("score") is not None else None
        cat = Path(f"{prefix}_catalog.ecsv")
        tmp = cat.with_name(cat.name + ".tmp")
        out["catalog"].write(tmp, format="ascii.ecsv", overwrite=True)
        tmp.replace(cat)  # atomic: a crash never leaves half a catalog
        return diff, score, cat

    def _set_status(self) -> None:
        m = self.model
        n = len(m.outputs["catalog"]) if m.outputs else 0
        res = m.outputs["result"] if m.outputs else None
        f = res.noise_correlation if res is not None else 1.0
        e = res.noise_correlation_error if res is not None else 0.0
        # the factor the variance planes were multiplied by: measured ones are worth seeing,
        # with how well they were measured
        err = f" ± {e:.2g}" if e > 0 else (" (uncertain)" if np.isnan(e) else "")
        noise = f" · variance × {f:.3g}{err} (noise correlation)" if f != 1.0 else ""
        self.status.value = f"<b>{'⏳ ' if m.busy else ''}{m.status}</b> · version {m.version} · {n} transient candidates{noise}"


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


#: mask planes in display priority (the first 8 share the first packed page)
_MASK_PRIORITY = ["CLIPPED", "NO_DATA", "SAT", "BAD", "INEXACT_PSF", "REJECTED", "SENSOR_EDGE", "CR", "INTRP", "EDGE", "SUSPECT", "STREAK", "DETECTED", "DETECTED_NEGATIVE"]
_MASK_DEFAULT_VISIBLE = ("CLIPPED", "SAT", "BAD", "NO_DATA")


def _bit_palette(color: str, bit: int) -> list[str]:
    """256-entry lookup table: ``color`` for byte values with ``bit`` set, transparent otherwise."""
    return [color if (v >> bit) & 1 else "#00000000" for v in range(256)]


def _needs(changed: set[str] | None):
    """``need(*outputs)``: True when any of them changed (everything when ``changed`` is None)."""
    return lambda *names: changed is None or bool(changed & set(names))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
