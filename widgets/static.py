"""Static Bokeh figures for the tutorials: a grid of linked image panels and a histogram against a
unit Gaussian.  Same screen-resolution reductions and uint8 stretches as the explorers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .display import block_factor, limits, reduce_block, stretch_uint8

if TYPE_CHECKING:
    from bokeh.models import GridPlot
    from bokeh.plotting import figure

__all__ = ["image_grid", "show_images", "scorr_histogram"]


def image_grid(images: Mapping[str, np.ndarray], ncols: int = 3, width: int = 260, symmetric: tuple[str, ...] = (), interval: str = "zscale", stretch: str = "linear", max_pixels: int = 512, marks: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> GridPlot:
    """A Bokeh grid of image panels with shared ranges.

    Parameters
    ----------
    images : mapping title -> 2-D array
        All the same shape.  Boolean or integer arrays are shown as masks (OR-reduced).
    symmetric : titles
        Panels shown with limits symmetric about 0 and a diverging colormap (difference, Scorr).
    marks : mapping title -> (x, y), optional
        Circles drawn on that panel (e.g. catalog positions).
    """
    from bokeh.layouts import gridplot
    from bokeh.models import LinearColorMapper
    from bokeh.palettes import Greys256, RdBu11
    from bokeh.plotting import figure

    if not images:
        raise ValueError("no images to show")
    shapes = {np.shape(a) for a in images.values()}
    if len(shapes) != 1:
        raise ValueError(f"images must share one shape, got {sorted(shapes)}")
    ny, nx = shapes.pop()
    f = block_factor((ny, nx), max_pixels)
    figs = []
    x_range = y_range = None
    for title, a in images.items():
        a = np.asarray(a)
        sym = title in symmetric
        if a.dtype.kind in "biu":
            red = reduce_block(a != 0, f, "or").astype(float)
            lo, hi = 0.0, 1.0
        else:
            red = reduce_block(a.astype(np.float32), f, "absmax" if sym else "mean")
            lo, hi = limits(red, interval, symmetric=sym)
        img = stretch_uint8(red, lo, hi, stretch)
        pal = list(RdBu11[::-1]) if sym else list(Greys256)
        mapper = LinearColorMapper(palette=pal, low=0, high=254, nan_color=(0, 0, 0, 0), high_color=(0, 0, 0, 0))
        kw = {"x_range": x_range, "y_range": y_range} if x_range is not None else {"x_range": (0, nx), "y_range": (0, ny)}
        p = figure(title=f"{title}  [{lo:.3g}, {hi:.3g}]", width=width, height=int(width * ny / nx) + 30, tools="pan,wheel_zoom,box_zoom,reset", match_aspect=True, **kw)
        p.image(image=[img.astype(np.float32)], x=0, y=0, dw=nx, dh=ny, color_mapper=mapper)
        if marks and title in marks:
            mx, my = marks[title]
            p.scatter(np.asarray(mx) + 0.5, np.asarray(my) + 0.5, marker="circle", size=12, fill_alpha=0, line_color="lime", line_width=2)
        p.axis.visible = False
        p.grid.visible = False
        x_range, y_range = p.x_range, p.y_range
        figs.append(p)
    return gridplot(figs, ncols=ncols)


def show_images(images: Mapping[str, np.ndarray], **kwargs) -> None:
    """Show :func:`image_grid` in the notebook."""
    from bokeh.io import show

    show(image_grid(images, **kwargs))


def scorr_histogram(values: np.ndarray, bins: int = 80, width: int = 420, title: str = "Scorr") -> figure:
    """Histogram (log counts) of ``values`` with the unit Gaussian expected for the same count."""
    from bokeh.plotting import figure
    from scipy import stats

    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v)]
    edges = np.linspace(-6, 6, bins + 1)
    counts, _ = np.histogram(np.clip(v, -6, 6), edges)
    expect = v.size * np.diff(stats.norm.cdf(edges))
    p = figure(title=f"{title}: std {v.std():.3f} (n = {v.size})", width=width, height=300, y_axis_type="log", x_axis_label="sigma", y_axis_label="pixels")
    mids = 0.5 * (edges[1:] + edges[:-1])
    p.vbar(x=mids, top=np.maximum(counts, 0.5), bottom=0.5, width=np.diff(edges)[0], fill_alpha=0.5, legend_label="measured")
    p.line(mids, np.maximum(expect, 0.5), line_color="red", line_width=2, legend_label="unit Gaussian")
    return p
