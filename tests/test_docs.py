"""The LSST-to-diffstack table in docs/lsst-mapping.md names things that exist."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import toolkit

DOC = Path(__file__).resolve().parents[1] / "docs" / "lsst-mapping.md"


def _toolkit_namespace() -> dict[str, list[object]]:
    """Every public or private name defined in a toolkit module, and every attribute of the
    classes defined there, mapped to the objects that carry it."""
    names: dict[str, list[object]] = {}
    for info in pkgutil.iter_modules(toolkit.__path__):
        mod = importlib.import_module(f"toolkit.{info.name}")
        names.setdefault(info.name, []).append(mod)
        for name, obj in vars(mod).items():
            names.setdefault(name, []).append(obj)
            if inspect.isclass(obj) and obj.__module__ == mod.__name__:
                for attr in dir(obj):
                    names.setdefault(attr, []).append(obj)
    return names


def _resolves(token: str, names: dict[str, list[object]]) -> bool:
    parts = token.split(".")
    if parts[0] == "toolkit":
        parts = parts[1:]
    roots = names.get(parts[0], [])
    for obj in roots:
        ok = True
        for p in parts[1:]:
            if not hasattr(obj, p):
                ok = False
                break
            obj = getattr(obj, p)
        if ok:
            return True
    return False


def _diffstack_tokens() -> list[tuple[int, str, str]]:
    """Backticked code names in the table's diffstack column as (line, kind, name): kind is
    "stage" or "timing" where the table says "stage(s) `x`" or "timing key `x`", else "name"
    (arguments and prose left out)."""
    out = []
    for lineno, line in enumerate(DOC.read_text().splitlines(), 1):
        cells = [c.strip() for c in line.split("|")]
        if len(cells) < 4 or not line.startswith("|") or cells[1].startswith("---") or cells[1].startswith("LSST"):
            continue
        kind = "name"
        for piece in re.split(r"(`[^`]*`)", cells[2]):
            if not piece.startswith("`"):
                # "stage `a`", "stages `a`, `b`" and "timing key `x`" name what follows
                if re.search(r"\bstages?\s*$", piece):
                    kind = "stage"
                elif re.search(r"timing key\s*$", piece):
                    kind = "timing"
                elif piece.strip(" ,") and not re.fullmatch(r"\s*(,|and)\s*", piece):
                    kind = "name"
                continue
            tok = re.sub(r"\(.*\)$", "", piece.strip("`")).strip()
            if tok.startswith("diffstack ") or tok in ("None", "True", "False") or not re.fullmatch(r"[A-Za-z_][\w.]*", tok):
                continue
            out.append((lineno, kind, tok))
    return out


def _is_package(token: str) -> bool:
    """A top-level package of this project (``widgets``), not just any installed one."""
    return "." not in token and (DOC.parents[1] / token / "__init__.py").is_file()


def _timing_keys() -> set[str]:
    """The keys written into a ``timings`` dict anywhere in toolkit."""
    src = "\n".join(p.read_text() for p in Path(toolkit.__file__).parent.glob("*.py"))
    return set(re.findall(r"timings\[\"(\w+)\"\]\s*=", src))


def test_mapping_table_names_exist():
    names = _toolkit_namespace()
    tokens = _diffstack_tokens()
    assert len(tokens) > 40  # the table was parsed, not skipped
    from toolkit.compare_warp import STAGES

    timing = _timing_keys()
    ok = {"stage": lambda t: t in STAGES, "timing": lambda t: t in timing, "name": lambda t: _resolves(t, names) or _is_package(t)}
    missing = [f"line {n}: {kind} {t}" for n, kind, t in tokens if not ok[kind](t)]
    assert not missing, "docs/lsst-mapping.md names what toolkit does not have:\n" + "\n".join(missing)


@pytest.mark.parametrize("token", ["zogy.no_such_function", "CompareWarpPipeline.no_such_stage"])
def test_resolver_rejects_unknown_names(token):
    assert not _resolves(token, _toolkit_namespace())
