"""Interactive explorers (ipywidgets + Bokeh) over the models of :mod:`toolkit.models`.

One-line entry points for notebooks::

    import widgets
    widgets.explore()             # simulated 10-epoch stack -> CompareWarp explorer
    widgets.explore_pair()        # simulated pair -> ZOGY explorer
    widgets.explore_pipeline()    # CompareWarp coadd as template, ZOGY of one epoch against it
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .display import block_factor, limits, reduce_block, stretch_uint8
from .explorers import CompareWarpExplorer, DisplaySettings, PipelineExplorer, ZogyExplorer, load_bokehjs

if TYPE_CHECKING:
    from toolkit import Exposure
    from toolkit.config import CompareWarpConfig, ZogyConfig

__all__ = [
    "explore", "explore_pair", "explore_pipeline", "CompareWarpExplorer", "ZogyExplorer", "PipelineExplorer",
    "DisplaySettings", "load_bokehjs", "block_factor", "reduce_block", "limits", "stretch_uint8",
]


def _warps(stack: Any):
    if stack is None:
        from toolkit.sim import simulate_stack

        stack = simulate_stack(seed=1)
    if hasattr(stack, "direct_warps"):
        return stack.direct_warps, stack.psf_matched_warps
    return list(stack), None


def explore(stack: Any = None, psf_matched_warps: Sequence[Exposure | None] | None = None, config: CompareWarpConfig | None = None, background: bool = False) -> CompareWarpExplorer:
    """CompareWarp explorer of ``stack`` (a SimulatedStack, or a list of direct-warp Exposures).

    With no argument a 10-epoch 256^2 stack is simulated.  ``background=True`` recomputes on a
    worker thread (latest change wins) instead of in the kernel's thread.
    """
    from toolkit.models import CompareWarpModel

    direct, matched = _warps(stack)
    deliver = _kernel_deliver() if background else None
    model = CompareWarpModel(direct, psf_matched_warps or matched, config, background=background, deliver=deliver)
    model.wait()
    load_bokehjs()
    return CompareWarpExplorer(model)


def explore_pair(science: Exposure | None = None, reference: Exposure | None = None, config: ZogyConfig | None = None) -> ZogyExplorer:
    """ZOGY explorer of ``science - reference`` (simulated with transients when omitted)."""
    from toolkit.models import ZogyModel

    if science is None or reference is None:
        from toolkit.sim import simulate_pair

        pair = simulate_pair(seed=2)
        science, reference = pair.science, pair.reference
    load_bokehjs()
    return ZogyExplorer(ZogyModel(science, reference, config))


def explore_pipeline(stack: Any = None, science: Exposure | None = None) -> PipelineExplorer:
    """CompareWarp-coadd ``stack`` into a template, then ZOGY one epoch (or ``science``) against it."""
    from toolkit.models import PipelineModel

    direct, matched = _warps(stack)
    load_bokehjs()
    return PipelineExplorer(PipelineModel(direct, matched, science=science))


def _kernel_deliver():
    """Run model publications on the kernel's asyncio loop (Bokeh/ipywidgets are not thread-safe)."""
    import asyncio

    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:
        return None
    return lambda fn: loop.call_soon_threadsafe(fn)
