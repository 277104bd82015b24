"""ipywidgets controls generated from param definitions, linked both ways.

Bounds, steps, allowed values and docs (as tooltips) come from the param objects of the
LSST-named config classes, so the UI can never offer a value the config would refuse.
Sliders use ``continuous_update=False``: the value is sent when the handle is released.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as ipw
import param

if TYPE_CHECKING:
    from toolkit.config import LsstConfig

__all__ = ["widget_for", "config_controls"]


def _css(name: str) -> str:
    return "ds-ctl-" + name.replace(".", "-")


def widget_for(obj: param.Parameterized, name: str, label: str | None = None) -> ipw.Widget | None:
    """A two-way linked widget for parameter ``name`` of ``obj`` (None for unsupported types)."""
    p = obj.param[name]
    value = getattr(obj, name)
    common: dict[str, Any] = {"description": label or name, "style": {"description_width": "initial"}}
    if isinstance(p, param.Boolean):
        w = ipw.Checkbox(value=bool(value), indent=False, **common)
    elif isinstance(p, param.Selector) and not isinstance(p, param.ClassSelector):
        w = ipw.Dropdown(options=list(p.objects), value=value, **common)
    elif isinstance(p, param.Integer):
        lo, hi = p.bounds if p.bounds else (None, None)
        if lo is not None and hi is not None:
            w = ipw.IntSlider(value=value, min=lo, max=hi, step=p.step or 1, continuous_update=False, **common)
        else:
            w = ipw.BoundedIntText(value=value, min=-(2**31) if lo is None else lo, max=2**31 - 1 if hi is None else hi, **common)
    elif isinstance(p, param.Number):
        lo, hi = p.bounds if p.bounds else (None, None)
        if lo is not None and hi is not None:
            step = p.step or (hi - lo) / 100.0
            w = ipw.FloatSlider(value=value, min=lo, max=hi, step=step, continuous_update=False, readout_format=".3g", **common)
        else:
            w = ipw.BoundedFloatText(value=value, min=-1e300 if lo is None else lo, max=1e300 if hi is None else hi, **common)
    elif isinstance(p, param.String):
        w = ipw.Text(value=value or "", continuous_update=False, **common)
    else:
        return None
    w.tooltip = (p.doc or name).strip()
    w.add_class("ds-control")
    w.add_class(_css(name))
    syncing = [False]

    def to_model(change: dict) -> None:
        if syncing[0]:
            return
        try:
            setattr(obj, name, change["new"])
        except ValueError as exc:  # refused by the config's bounds/validation: put the widget back
            syncing[0] = True
            try:
                w.value = getattr(obj, name)
            finally:
                syncing[0] = False
            w.tooltip = f"refused: {exc}"

    def to_widget(event: param.parameterized.Event) -> None:
        syncing[0] = True
        try:
            w.value = event.new
        finally:
            syncing[0] = False

    w.observe(to_model, names="value")
    obj.param.watch(to_widget, [name])
    return w


def config_controls(config: LsstConfig, title: str = "config") -> ipw.Accordion:
    """Accordion of the config's fields, grouped as LSST groups them (top level, then each subtask)."""
    groups: list[tuple[str, list[ipw.Widget]]] = []

    def collect(cfg, prefix: str) -> None:
        own = []
        nested = cfg.nested()
        for n in cfg.field_names():
            if n in nested:
                continue
            w = widget_for(cfg, n, label=n)
            if w is not None:
                own.append(w)
        if own:
            groups.append((prefix or title, own))
        for n, sub in nested.items():
            collect(sub, f"{prefix + '.' if prefix else ''}{n}")

    collect(config, "")
    acc = ipw.Accordion(children=[ipw.VBox(ws) for _, ws in groups])
    for i, (name, _) in enumerate(groups):
        acc.set_title(i, name)
    acc.selected_index = 0 if groups else None
    acc.add_class("ds-config")
    return acc
