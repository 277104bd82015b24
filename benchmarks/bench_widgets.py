"""Explorer responsiveness: time from a parameter change to new data in the Bokeh sources, and
the bytes each panel update ships, headless (no browser: what the kernel does before sending).

* CompareWarp explorer on a 10 x 2048^2 simulated stack: change ``spatialThreshold`` (re-runs the
  filter and the final stack, then re-renders the coadd and its mask layers).
* ZOGY explorer on a 4096^2 simulated pair: change ``paddingSeed`` (a full ZOGY re-run, all four
  panels re-rendered), then ``transientThreshold`` (the catalog alone is re-made from the last
  result, and only its markers re-rendered).

For every update it prints the bytes assigned to each panel's sources against the panel's screen
pixels (``panel_size``^2), and the largest buffer side, which must stay far below the image size.

Targets (issue 6): spatialThreshold change <= 0.7 s end to end at 2048^2 x 10; bytes per panel
update <= 2x the panel's screen pixels; no update ships a full-resolution 4096^2 array.

Usage: python benchmarks/bench_widgets.py [--stack-size 2048] [--pair-size 4096]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def _report(explorer, label: str) -> None:
    screen = explorer.panel_size**2
    by_panel: dict[str, int] = {}
    # a panel's layers count together: the coadd with its packed mask pages, the warpDiff with
    # its candidate footprints
    owner = {"mask": "coadd", "candidates": "warp_diff"}
    for name, nbytes in explorer.bytes_sent.items():
        if name == "cutouts":
            continue
        panel = owner.get(name.split(":")[0], name)
        by_panel[panel] = by_panel.get(panel, 0) + nbytes
    sides = [max(np.shape(s.data["image"][0])) for s in explorer.sources.values() if "image" in s.data]
    print(f"  {label}: largest buffer side {max(sides)} px (image {explorer.shape[0]} px); bytes per panel update vs screen pixels ({explorer.panel_size}^2):")
    for panel, nbytes in by_panel.items():
        print(f"    {panel:12s} {nbytes:9d} B = {nbytes / screen:5.2f}x screen pixels (target <= 2)")


def bench_stack(size: int) -> None:
    from toolkit.models import CompareWarpModel
    from toolkit.sim import simulate_stack
    from widgets.explorers import CompareWarpExplorer

    stack = simulate_stack(n_epochs=10, size=size, seed=11, psf_matched=False, keep_truth_images=False)
    t = time.perf_counter()
    model = CompareWarpModel(stack.direct_warps)
    explorer = CompareWarpExplorer(model)
    print(f"\n== CompareWarp explorer, 10 x {size}^2: first build {time.perf_counter() - t:.1f} s")
    for value in (0.3, 0.45, 0.6):
        explorer.bytes_sent.clear()
        n0 = explorer.render_count
        t = time.perf_counter()
        model.config.spatialThreshold = value  # synchronous model: returns after the re-render
        dt = time.perf_counter() - t
        assert explorer.render_count == n0 + 1
        print(f"  spatialThreshold -> {value}: change to sources {dt:.3f} s (target <= 0.7); stages re-run: filter {model.pipeline.timings.get('filter', 0):.3f} s, coadd {model.pipeline.timings.get('coadd', 0):.3f} s")
    _report(explorer, "spatialThreshold update")


def bench_pair(size: int) -> None:
    from toolkit.models import ZogyModel
    from toolkit.sim import simulate_pair
    from widgets.explorers import ZogyExplorer

    pair = simulate_pair(size=size, seed=3)
    t = time.perf_counter()
    model = ZogyModel(pair.science, pair.reference)
    explorer = ZogyExplorer(model)
    print(f"\n== ZOGY explorer, {size}^2 pair: first build {time.perf_counter() - t:.1f} s")
    for seed in (1, 2):
        explorer.bytes_sent.clear()
        t = time.perf_counter()
        model.config.paddingSeed = seed
        print(f"  paddingSeed -> {seed} (full ZOGY re-run): change to sources {time.perf_counter() - t:.3f} s")
    _report(explorer, "ZOGY update")
    for thr in (7.0, 5.0):
        runs, t = model.zogy_runs, time.perf_counter()
        model.config.transientThreshold = thr
        print(f"  transientThreshold -> {thr:g} (catalog only, ZOGY re-run: {'yes' if model.zogy_runs > runs else 'no'}): change to sources {time.perf_counter() - t:.3f} s, {len(model.outputs['catalog'])} entries")
    biggest = max(max(np.shape(s.data["image"][0])) for s in explorer.sources.values() if "image" in s.data)
    print(f"  full-resolution {size}^2 shipped: {'YES (fails)' if biggest >= size else 'no'}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stack-size", type=int, default=2048)
    ap.add_argument("--pair-size", type=int, default=4096)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    bench_stack(args.stack_size)
    bench_pair(args.pair_size)
