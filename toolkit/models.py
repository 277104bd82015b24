"""param models behind the explorers: data + config + staged pipeline, no widget imports.

A model owns its inputs, a config (the LSST-named param classes of :mod:`toolkit.config`) and a
staged pipeline.  Any change of a config parameter requests a recompute; the pipeline's cache
re-runs only the stages downstream of the change.  When new outputs are ready the model sets
``changed`` (the names of the outputs that changed) and bumps ``version``, which is what views
watch.

Latest wins: every request gets a generation number.  In ``background=True`` mode the work runs
on one worker thread; a request that is already stale when the worker reaches it is skipped, and
a result whose generation is no longer the newest is dropped, so a view never shows an older
result after a newer one.  ``deliver`` lets a UI marshal results back to its own event loop
(Bokeh documents and ipywidgets are not thread-safe).
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import param

from .compare_warp import CompareWarpPipeline, SkyOffsetWarning
from .config import CompareWarpConfig, LsstConfig, ZogyConfig, as_config
from .errors import InputError, collect_warnings
from .exposure import Exposure

__all__ = ["CompareWarpModel", "ZogyModel", "PipelineModel", "watch_config"]


def watch_config(config: LsstConfig, callback: Callable[[list], None]) -> list:
    """Watch every parameter of ``config`` and its nested groups; returns the watchers."""
    watchers = [config.param.watch(callback, list(config.field_names()) if hasattr(config, "field_names") else list(config.param))]
    for sub in config.nested().values():
        watchers += watch_config(sub, callback)
    return watchers


class _StagedModel(param.Parameterized):
    version = param.Integer(0, doc="Bumped each time new outputs are published.")
    changed = param.List([], doc="Names of the outputs that changed in the last publication.")
    status = param.String("", doc="Human-readable state: computing, done, error message.")
    notes = param.List([], doc="The warnings that hold for the published outputs (\"Category: message\"): a display shows them, since a warning given inside a widget's callback reaches no notebook cell.")
    busy = param.Boolean(False)

    def __init__(self, background: bool = False, deliver: Callable[[Callable[[], None]], None] | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.background = background
        self.deliver = deliver
        self._generation = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1) if background else None
        self.outputs: dict[str, Any] = {}
        self.compute_count = 0

    # -- subclasses implement _compute(snapshot) -> dict of outputs and _snapshot() -> frozen inputs
    def _snapshot(self) -> Any:
        raise NotImplementedError

    def _compute(self, snapshot: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _notes(self, out: dict[str, Any], given: list[str]) -> list[str]:
        """The warnings that hold for ``out``: by default those given while it was computed."""
        return list(dict.fromkeys(given))

    def request_update(self, *_: Any) -> Future | None:
        """Schedule a recompute (synchronous unless ``background``)."""
        with self._lock:
            self._generation += 1
            gen = self._generation
        snap = self._snapshot()
        if self._executor is None:
            self._run(gen, snap)
            return None
        self.busy = True
        self.status = "computing…"
        return self._executor.submit(self._run, gen, snap)

    def _run(self, gen: int, snap: Any) -> None:
        if gen != self._generation:
            return  # superseded before it started
        try:
            with collect_warnings() as given:
                out = self._compute(snap)
            notes = self._notes(out, given)
            error = None
        except Exception as exc:  # shown in the UI status line; the previous outputs stay
            out, notes, error = None, [], f"{type(exc).__name__}: {exc}"
        self.compute_count += 1

        def publish() -> None:
            if gen != self._generation:
                return  # a newer request exists: never show this older result
            if error is not None:
                self.status = error
                self.busy = False
                return
            changed = [k for k, v in out.items() if self.outputs.get(k) is not v]
            self.outputs = out
            with param.parameterized.batch_call_watchers(self):
                self.changed = changed
                self.notes = notes
                self.status = "done"
                self.busy = False
                self.version += 1

        if self.deliver is not None and self._executor is not None:
            self.deliver(publish)
        else:
            publish()

    def wait(self, timeout: float = 60.0) -> None:
        """Block until queued work has finished (tests and scripts)."""
        if self._executor is not None:
            self._executor.submit(lambda: None).result(timeout)


class CompareWarpModel(_StagedModel):
    """A simulated or loaded stack, its CompareWarpConfig and the cached CompareWarp stages.

    Outputs (``model.outputs``): ``coadd`` (Exposure), ``template`` (Exposure), ``epoch_count``,
    ``n_image``, ``artifact_masks`` (list of dicts), ``warp_diff`` and ``candidates`` of the
    selected ``epoch``, ``run_counts`` (copy of the pipeline's stage counters).
    """

    epoch = param.Integer(0, bounds=(0, None), doc="Epoch shown in the warp / warpDiff panels.")

    def __init__(self, direct_warps: list[Exposure], psf_matched_warps: list[Exposure | None] | None = None, config: CompareWarpConfig | None = None, background: bool = False, deliver=None, compute: bool = True, **params: Any) -> None:
        super().__init__(background=background, deliver=deliver, **params)
        if not direct_warps:
            raise InputError("CompareWarpModel needs at least one warp")
        self.param.epoch.bounds = (0, len(direct_warps) - 1)
        self.config = as_config(config, CompareWarpConfig)
        self.pipeline = CompareWarpPipeline(direct_warps, psf_matched_warps, config=self.config.copy())
        self._watchers = watch_config(self.config, self.request_update)
        self.param.watch(self.request_update, ["epoch"])
        if compute:
            self.request_update()

    @property
    def n_epochs(self) -> int:
        return len(self.pipeline.direct_warps)

    def _snapshot(self):
        return self.config.copy(), int(self.epoch)

    def _compute(self, snap) -> dict[str, Any]:
        cfg, epoch = snap
        p = self.pipeline
        p.config = cfg  # the pipeline's cache keys on config values, so unchanged stages are reused
        coadd = p.coadd
        return {
            "coadd": coadd,
            "n_image": p.coadd_result.n_image,
            "input_map": p.coadd_result.input_map,
            "template": p.template,
            "epoch_count": p.epoch_count,
            "artifact_masks": p.artifact_masks,
            "protected": p.protected_footprints,
            "warp_diff": p.warp_diffs[epoch],
            "candidates": p.candidate_image(epoch),
            "warp": p.direct_warps[epoch],
            "epoch": epoch,
            "config": cfg,
            "run_counts": dict(p.run_counts),
        }

    def _notes(self, out: dict[str, Any], given: list[str]) -> list[str]:
        # the sky-offset warning is given once, when the candidates stage runs; it holds for
        # every later output made from those candidates, so it is asked for, not collected
        notes = [g for g in given if not g.startswith(SkyOffsetWarning.__name__ + ":")]
        sky = self.pipeline.sky_offset_note
        return list(dict.fromkeys(notes + ([f"{SkyOffsetWarning.__name__}: {sky}"] if sky else [])))

    def pixel_series(self, x: int, y: int) -> dict[str, np.ndarray]:
        """Per-epoch direct-warp value, sigma, clipped flag and contributed flag at parent (x, y)."""
        p = self.pipeline
        w0 = p.direct_warps[0]
        ix, iy = x - w0.xy0[0], y - w0.xy0[1]
        if not (0 <= ix < w0.shape[1] and 0 <= iy < w0.shape[0]):
            raise InputError(f"pixel ({x}, {y}) is outside the stack")
        vals = np.array([w.image[iy, ix] for w in p.direct_warps], float)
        sig = np.sqrt(np.array([w.variance[iy, ix] for w in p.direct_warps], float))
        clipped = np.array([m["CLIPPED"][iy, ix] for m in p.artifact_masks], bool)
        used = np.unpackbits(p.coadd_result.input_map[:, iy, ix])[: len(vals)].astype(bool)
        return {"epoch": np.arange(len(vals)), "value": vals, "sigma": sig, "clipped": clipped, "used": used}


class ZogyModel(_StagedModel):
    """A science/template pair, its ZogyConfig and the ZOGY outputs (diff, score, Scorr, catalog)."""

    def __init__(self, science: Exposure, template: Exposure, config: ZogyConfig | None = None, background: bool = False, deliver=None, compute: bool = True, **params: Any) -> None:
        super().__init__(background=background, deliver=deliver, **params)
        self.science, self.template = science, template
        self.config = as_config(config, ZogyConfig)
        self._last: tuple | None = None
        #: how many times ZOGY itself ran (a catalog-only change does not run it)
        self.zogy_runs = 0
        self._watchers = watch_config(self.config, self.request_update)
        if compute:
            self.request_update()

    def set_inputs(self, science: Exposure | None = None, template: Exposure | None = None) -> None:
        if science is not None:
            self.science = science
        if template is not None:
            self.template = template
        self.request_update()

    #: config fields that only the transient catalog reads: changing them re-makes the catalog
    #: from the last result instead of re-running ZOGY (0.3 s at 2048^2, 1 s when the noise
    #: correlation is measured, against ~5 ms for the catalog)
    CATALOG_FIELDS = ("transientThreshold", "transientMinPixels", "transientMinProminence")

    def _snapshot(self):
        return self.config.copy(), self.science, self.template

    def _compute(self, snap) -> dict[str, Any]:
        from .zogy import transient_catalog, zogy

        cfg, sci, tmpl = snap
        key = {k: v for k, v in cfg.to_dict().items() if k not in self.CATALOG_FIELDS}
        last = self._last  # read and written on the one computing thread only
        if last is not None and last[0] is sci and last[1] is tmpl and last[2] == key:
            res = copy.copy(last[3])  # D, S and Scorr shared: their panels are not re-rendered
            res.catalog = transient_catalog(res, cfg.transientThreshold, cfg.transientMinPixels, cfg.transientMinProminence)
            given = last[4]  # the same list: the ZOGY run's warnings hold for its result
        else:
            with collect_warnings() as given:
                res = zogy(sci, tmpl, cfg)  # its catalog made with cfg's catalog fields
            self.zogy_runs += 1
        self._last = (sci, tmpl, key, res, given)
        return {"diff": res.diff, "score": res.score, "scorr": res.scorr, "catalog": res.catalog, "result": res, "science": sci, "template": tmpl, "zogy_warnings": given}

    def _notes(self, out: dict[str, Any], given: list[str]) -> list[str]:
        return list(dict.fromkeys(out["zogy_warnings"] + given))


class PipelineModel(param.Parameterized):
    """Coadd a template from a stack with CompareWarp, then ZOGY one science epoch against it.

    ``science_epoch`` picks the direct warp to subtract; alternatively pass ``science`` (e.g. the
    coadd of a second stack).  The ZOGY model's template follows the CompareWarp coadd.
    """

    science_epoch = param.Integer(0, bounds=(0, None))

    def __init__(self, direct_warps: list[Exposure], psf_matched_warps=None, science: Exposure | None = None, coadd_config: CompareWarpConfig | None = None, zogy_config: ZogyConfig | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.param.science_epoch.bounds = (0, len(direct_warps) - 1)
        self.fixed_science = science
        self.coadd_model = CompareWarpModel(direct_warps, psf_matched_warps, coadd_config)
        self.zogy_model = ZogyModel(self._science(), self.coadd_model.outputs["coadd"], zogy_config)
        self.coadd_model.param.watch(self._coadd_changed, ["version"])
        self.param.watch(lambda *_: self.zogy_model.set_inputs(science=self._science()), ["science_epoch"])

    def _science(self) -> Exposure:
        if self.fixed_science is not None:
            return self.fixed_science
        return self.coadd_model.pipeline.direct_warps[self.science_epoch]

    def _coadd_changed(self, *_: Any) -> None:
        if "coadd" in self.coadd_model.changed:
            self.zogy_model.set_inputs(template=self.coadd_model.outputs["coadd"])
