"""``param`` configuration classes that mirror LSST's task configs field for field.

Field names are LSST's (camelCase, as they appear in a ``pipetask`` override file), defaults are
LSST's current ones (drp_tasks / meas_algorithms / last ip_diffim ZogyTask), and bounds and
allowed values are enforced at assignment by ``param``.  ``validate()`` adds LSST's
cross-field rules.  :meth:`LsstConfig.to_pex_override` writes ``config.<dotted> = <literal>``
lines; :func:`load_pex_override` reads them back *without executing anything* (``ast`` only),
as it reads the override files of LSST's ``obs_*`` packages (imports, ``config.load``, list
methods, registry spellings; see :func:`parse_pex_override`).  :meth:`LsstConfig.from_yaml` also
takes one task's config from an LSST pipeline YAML.

diffstack-only options (not LSST fields) are listed in ``_diffstack_only`` and never written to a
pex override; they do travel in YAML/JSON.  The one renamed pair is ZOGY's flux scalings:
diffstack names them by role (``scienceFluxScaling`` scales the science image) while LSST's
``templateFluxScaling`` was applied to exposure1, the science image; the export swaps them back
(see ``ZogyConfig._pex_names``).
"""

from __future__ import annotations

import ast
import datetime as _dt
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple

import param

from .errors import ConfigError, warn

__all__ = [
    "LsstConfig",
    "AssembleCoaddConfig",
    "CompareWarpConfig",
    "DetectionConfig",
    "ScaleVarianceConfig",
    "InterpImageConfig",
    "MaskStreaksConfig",
    "CoaddPsfConfig",
    "ZogyConfig",
    "CompareWarpAssembleCoaddConfig",
    "SourceDetectionConfig",
    "ScaleVarianceImageConfig",
    "PRESETS",
    "preset",
    "load_pex_override",
    "parse_pex_override",
    "parse_override_option",
    "pipetask_value",
    "PexStatement",
    "config_from_file",
]

#: afw.math.Property names (LSST statistic choices)
AFW_PROPERTIES = [
    "NOTHING", "ERRORS", "NPOINT", "MEAN", "STDEV", "VARIANCE", "MEDIAN", "IQRANGE", "MEANCLIP",
    "STDEVCLIP", "VARIANCECLIP", "MIN", "MAX", "SUM", "MEANSQUARE", "ORMASK", "NCLIPPED", "NMASKED",
]
#: statistics this engine stacks with (the ones CompareWarp and AssembleCoadd use in practice)
SUPPORTED_STATISTICS = ("MEAN", "MEDIAN", "MEANCLIP")


class LsstConfig(param.Parameterized):
    """Base: recursive export/import for configs whose parameters are LSST fields."""

    _diffstack_only: tuple[str, ...] = ()
    _pex_names: dict[str, str] = {}
    #: LSST fields and groups of this config with no effect on what diffstack computes; a saved
    #: pex_config dump sets them all (PipelineTaskConfig's log switch, butler connections)
    _lsst_no_effect: frozenset[str] = frozenset({"saveLogOutput", "connections"})
    #: LSST fields diffstack does not implement, with LSST's default (what runs here)
    _lsst_unimplemented: dict[str, Any] = {}
    #: switches that LSST declares as Field[int] (saved as 0/1), held here as booleans
    _lsst_int_fields: frozenset[str] = frozenset()
    #: fields of this config kept for LSST's sake (exported, shown) that change nothing
    #: diffstack computes: read from a file at a value other than the default, they warn
    _lsst_inert: frozenset[str] = frozenset()

    def __init__(self, **params: Any) -> None:
        nested = {k: v for k, v in params.items() if isinstance(v, dict) and isinstance(self.param[k], param.ClassSelector) if k in self.param}
        flat = {k: v for k, v in params.items() if k not in nested}
        super().__init__(**flat)
        for k, v in nested.items():
            getattr(self, k).update_from_dict(v)

    def __setattr__(self, name: str, value: Any) -> None:
        # param checks a value as it is assigned and raises ValueError; a ConfigError (itself a
        # ValueError) says it is the config that refused it, as every other config check does
        try:
            super().__setattr__(name, value)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    # ------------------------------------------------------------------ introspection
    def field_names(self) -> list[str]:
        return [n for n in self.param if n != "name"]

    def nested(self) -> dict[str, "LsstConfig"]:
        return {n: getattr(self, n) for n in self.field_names() if isinstance(getattr(self, n), LsstConfig)}

    def to_dict(self) -> dict[str, Any]:
        """Nested plain-Python dictionary of every field."""
        out: dict[str, Any] = {}
        for n in self.field_names():
            v = getattr(self, n)
            if isinstance(v, LsstConfig):
                out[n] = v.to_dict()
            elif isinstance(v, tuple):
                out[n] = list(v)
            elif isinstance(v, dict):
                out[n] = dict(v)
            elif isinstance(v, list):
                out[n] = list(v)
            else:
                out[n] = v
        return out

    def update_from_dict(self, d: dict[str, Any], prefix: str = "") -> None:
        """Set fields from a nested dictionary (validated); unknown keys raise ConfigError."""
        flat = {}
        for k, v in d.items():
            if k not in self.param or k == "name":
                raise ConfigError(f"unknown config field {prefix + str(k)!r} for {type(self).__name__}")
            cur = getattr(self, k)
            if isinstance(cur, LsstConfig):
                if not isinstance(v, dict):
                    raise ConfigError(f"{prefix}{k} is a config group; give a mapping, got {v!r}")
                cur.update_from_dict(v, prefix=f"{prefix}{k}.")
            else:
                p = self.param[k]
                if isinstance(p, param.Number) and not isinstance(p, param.Integer) and isinstance(v, int) and not isinstance(v, bool):
                    # pex_config's float fields take an int as that float (thresholdValue = 6)
                    v = float(v)
                if isinstance(p, param.Boolean) and k in type(self)._lsst_int_fields and isinstance(v, int) and not isinstance(v, bool) and v in (0, 1):
                    # an LSST Field[int] used as a switch (InterpImageConfig.transpose): saved
                    # configs write it as 0 or 1
                    v = bool(v)
                if isinstance(p, param.NumericTuple) and isinstance(v, list):
                    v = tuple(v)
                if isinstance(p, param.List) and isinstance(v, tuple):
                    v = list(v)
                flat[k] = v
        try:
            self.param.update(**flat)
        except ValueError as exc:
            raise ConfigError(f"{prefix}{exc}") from None

    def set_dotted(self, dotted: str, value: Any) -> None:
        """Assign ``a.b.c = value`` (as in an override file)."""
        parts = dotted.split(".")
        obj: LsstConfig = self
        for i, part in enumerate(parts[:-1]):
            if part not in obj.param or not isinstance(getattr(obj, part), LsstConfig):
                raise ConfigError(f"unknown config group {'.'.join(parts[: i + 1])!r}")
            obj = getattr(obj, part)
        obj.update_from_dict({parts[-1]: value}, prefix=".".join(parts[:-1]) + "." if len(parts) > 1 else "")

    def get_dotted(self, dotted: str) -> Any:
        """The value of ``a.b.c``; an unknown name raises :class:`ConfigError`."""
        parts = dotted.split(".")
        obj: Any = self
        for i, part in enumerate(parts):
            if not isinstance(obj, LsstConfig) or part not in obj.param or part == "name":
                raise ConfigError(f"unknown config field {'.'.join(parts[: i + 1])!r} for {type(self).__name__}")
            obj = getattr(obj, part)
        return obj

    def flat_items(self, pex: bool = False, prefix: str = "") -> list[tuple[str, Any]]:
        """``(dotted_name, value)`` pairs; with ``pex=True`` only LSST fields, in LSST names."""
        items = []
        for n in self.field_names():
            if pex and n in self._diffstack_only:
                continue
            v = getattr(self, n)
            name = self._pex_names.get(n, n) if pex else n
            if isinstance(v, LsstConfig):
                items.extend(v.flat_items(pex, prefix=f"{prefix}{name}."))
            else:
                items.append((f"{prefix}{name}", v))
        return items

    def copy(self) -> "LsstConfig":
        new = type(self)()
        new.update_from_dict(self.to_dict())
        return new

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def validate(self) -> None:
        for sub in self.nested().values():
            sub.validate()

    # ------------------------------------------------------------------ lsst.pex.config API
    # The methods of an lsst.pex.config.Config that read, write and inspect it, with pex_config's
    # names, arguments and semantics (in place, LSST field names), so code written against a
    # pex_config object runs on these.  One departure: override files are parsed, never
    # executed (see parse_pex_override), so a file with other Python raises ConfigError.
    def load(self, filename: str | Path, root: str = "config") -> None:
        """Apply the override file ``filename`` to this config, in place (pex ``Config.load``);
        ``root`` is the name the file gives the config."""
        p = Path(filename)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        self._apply_pex(_config_text(p), p.absolute(), (p.resolve(),), root=root)

    def loadFromString(self, code: str | bytes, root: str = "config", filename: str | Path | None = None, extraLocals: dict | None = None) -> None:  # noqa: N802 (LSST's name)
        """Apply override code to this config, in place (pex ``Config.loadFromString``).
        ``filename`` anchors ``config.load`` of a relative path; ``extraLocals`` (variables for
        executed code) has no meaning for code that is parsed, and is refused."""
        if extraLocals:
            raise ConfigError("extraLocals: diffstack parses override code and never executes it, so extra variables cannot be given")
        text = code.decode() if isinstance(code, bytes) else code
        if not isinstance(text, str):
            raise ConfigError(f"loadFromString needs the override text, got {type(code).__name__}")
        path = Path(filename).absolute() if filename is not None else None
        self._apply_pex(text, path, (), root=root)

    def loadFromStream(self, stream: Any, root: str = "config", filename: str | Path | None = None, extraLocals: dict | None = None) -> None:  # noqa: N802
        """Apply override code read from ``stream`` (a file object or a string), in place (pex
        ``Config.loadFromStream``)."""
        text = stream.read() if hasattr(stream, "read") else stream
        if filename is None:
            filename = getattr(stream, "name", None)
        self.loadFromString(text, root=root, filename=filename, extraLocals=extraLocals)

    def saveToString(self, skipImports: bool = False) -> str:  # noqa: N802
        """Every LSST field as override code (pex ``Config.saveToString``); ``skipImports`` is
        accepted for pex's signature (diffstack writes no imports)."""
        return self.to_pex_override(only_changed=False)

    def saveToStream(self, outfile: Any, root: str = "config", skipImports: bool = False) -> None:  # noqa: N802
        """Write :meth:`saveToString`'s text, with the config named ``root``, to ``outfile``."""
        outfile.write(self._saved_text(root))

    def save(self, filename: str | Path, root: str = "config") -> None:
        """Write every LSST field to ``filename`` (pex ``Config.save``), atomically."""
        from .io import atomic_write

        text = self._saved_text(root)
        atomic_write(filename, lambda tmp: Path(tmp).write_text(text))

    def _saved_text(self, root: str) -> str:
        if not root.isidentifier():
            raise ConfigError(f"root must be a Python name, got {root!r}")
        text = self.saveToString()
        return text if root == "config" else "\n".join(f"{root}.{ln[7:]}" if ln.startswith("config.") else ln for ln in text.splitlines()) + "\n"

    def toDict(self) -> dict[str, Any]:  # noqa: N802
        """LSST fields as a nested dictionary (pex ``Config.toDict``): sub-configs as dicts,
        LSST names, diffstack-only options left out."""
        out: dict[str, Any] = {}
        for n in self.field_names():
            if n in self._diffstack_only:
                continue
            v = getattr(self, n)
            name = self._pex_names.get(n, n)
            out[name] = v.toDict() if isinstance(v, LsstConfig) else (list(v) if isinstance(v, tuple) else v)
        return out

    def names(self) -> list[str]:
        """Every LSST field's dotted name, sub-configs' fields included (pex ``Config.names``)."""
        return [n for n, _ in self.flat_items(pex=True)]

    def keys(self) -> list[str]:
        """The top-level LSST field names (pex ``Config.keys``)."""
        return list(self.toDict())

    def values(self) -> list[Any]:
        """The top-level LSST field values, sub-configs as config objects (pex ``Config.values``)."""
        return [v for _, v in self.items()]

    def items(self) -> list[tuple[str, Any]]:
        """``(name, value)`` of the top-level LSST fields (pex ``Config.items``)."""
        return [(self._pex_names.get(n, n), getattr(self, n)) for n in self.field_names() if n not in self._diffstack_only]

    def compare(self, other: "LsstConfig", shortcut: bool = True, rtol: float = 1e-8, atol: float = 1e-8, output: Callable[[str], None] | None = None) -> bool:
        """Whether ``other`` has the same LSST field values (pex ``Config.compare``): floats
        within ``rtol``/``atol``; each difference is reported to ``output`` when given, and
        ``shortcut`` stops at the first."""
        if type(other) is not type(self):
            if output is not None:
                output(f"types differ: {type(self).__name__} != {type(other).__name__}")
            return False
        mine, theirs = dict(self.flat_items(pex=True)), dict(other.flat_items(pex=True))
        equal = True
        for name, a in mine.items():
            b = theirs[name]
            if isinstance(a, float) and isinstance(b, float):
                same = math.isclose(a, b, rel_tol=rtol, abs_tol=atol) or (math.isnan(a) and math.isnan(b))
            else:
                same = _same(a, b)
            if not same:
                equal = False
                if output is not None:
                    output(f"{type(self).__name__}.{name}: {a!r} != {b!r}")
                if shortcut:
                    break
        return equal

    # ------------------------------------------------------------------ export
    def to_pex_override(
        self,
        label: str | None = None,
        only_changed: bool = True,
        preset_name: str = "custom",
        note: str = "",
        path: str | Path | None = None,
    ) -> str:
        """Text of a ``pipetask run -C <label>:<file>`` override file.

        Parameters
        ----------
        label : str, optional
            Pipeline task label used in the header's usage line (e.g. ``assembleDeepCoadd``).
        only_changed : bool
            Only fields whose value differs from LSST's defaults (default); else every field.
        preset_name, note : str
            Recorded in the header comment (the preset tuned from, and the data it was tuned on).
        path : path-like, optional
            Also write the text there (atomically).
        """
        from . import __version__

        self.validate()
        default = dict(type(self)().flat_items(pex=True))
        lines = [
            f"# {type(self).__name__} override written by diffstack {__version__}",
            f"# date: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}",
            f"# preset: {preset_name}",
        ]
        if note:
            lines += [f"# note: {line}" for line in note.splitlines()]
        usage = label or "<label>"
        lines.append(f"# usage: pipetask run ... -C {usage}:<this file>")
        lines += self._pex_header_notes()
        for name, value in self.flat_items(pex=True):
            if only_changed and name in default and _same(default[name], value):
                continue
            lines.append(f"config.{name} = {_literal(value)}")
        # what was tuned here but has no LSST field: said, so nobody expects pipetask to apply it
        fresh = type(self)()
        extra = [f"#   {n} = {_literal(getattr(self, n))}" for n in self._diffstack_only if not _same(getattr(fresh, n), getattr(self, n))]
        if extra:
            lines += ["# diffstack-only options set here (no LSST field, so pipetask does not apply them):"] + extra
        text = "\n".join(lines) + "\n"
        if path is not None:
            from .io import atomic_write

            atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return text

    def _pex_header_notes(self) -> list[str]:
        return []

    def to_yaml(self, path: str | Path | None = None) -> str:
        import yaml

        text = yaml.safe_dump({"class": type(self).__name__, "config": self.to_dict()}, sort_keys=False)
        if path is not None:
            from .io import atomic_write

            atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return text

    def to_json(self) -> str:
        return json.dumps({"class": type(self).__name__, "config": self.to_dict()}, indent=1)

    @classmethod
    def from_yaml(cls, text: str, label: str | None = None, path: str | Path | None = None) -> "LsstConfig":
        """A diffstack YAML export, or the config of one task of an LSST pipeline YAML.

        In a pipeline (a mapping with ``tasks`` and/or ``imports``), the task is the one labelled
        ``label``, or else the only one whose class is this config's LSST task (e.g.
        CompareWarpAssembleCoaddTask).  ``imports`` are followed as pipetask follows them
        (``location`` with ``$VARIABLES``, ``include``/``exclude``, ``rename``; see
        :func:`_resolve_pipeline`).  The task's ``config`` blocks are applied in order, and within
        a block in pipetask's order: ``file:`` override files, then the ``python:`` code (read as
        an override file, never executed), then the ``field.sub: value`` keys, with
        ``parameters.<name>`` values taken from the pipeline's ``parameters``.  Relative paths are
        read from the working directory, as pipetask reads them.
        """
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}") from None
        return cls._from_payload(data, label=label, path=Path(path) if path is not None else None)

    @classmethod
    def from_json(cls, text: str) -> "LsstConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc}") from None
        return cls._from_payload(data)

    #: the LSST task classes whose config this class mirrors (for pipeline YAML)
    _lsst_tasks: tuple[str, ...] = ()

    @classmethod
    def _from_payload(cls, data: Any, label: str | None = None, path: Path | None = None) -> "LsstConfig":
        if isinstance(data, dict) and ({"tasks", "imports", "inherits"} & data.keys()) and "config" not in data:
            return cls._from_pipeline(data, label, path)
        if not isinstance(data, dict) or "config" not in data:
            raise ConfigError("config document must be a mapping with 'class' and 'config' keys (a diffstack export), or an LSST pipeline with 'tasks'")
        task = str(data.get("class", "")).rsplit(".", 1)[-1]
        if cls._lsst_tasks and task in cls._lsst_tasks:
            # one LSST task entry ("class: lsst....Task" + "config:"): the pipeline form
            return cls._from_pipeline({"tasks": {task: data}}, task, path)
        # a config class by its name, or LSST's dotted path to it (lsst.drp.tasks...Config)
        klass = CONFIG_CLASSES.get(str(data.get("class", cls.__name__)).rsplit(".", 1)[-1])
        if klass is None:
            raise ConfigError(f"unknown config class {data.get('class')!r}")
        if cls is not LsstConfig and not issubclass(klass, cls):
            raise ConfigError(f"document holds a {klass.__name__}, expected {cls.__name__}")
        cfg = klass()
        cfg.update_from_dict(data["config"])
        cfg.validate()
        return cfg

    @classmethod
    def _from_pipeline(cls, data: dict, label: str | None, path: Path | None) -> "LsstConfig":
        tasks, params, _, instrument = _resolve_pipeline(data, path, ())

        if label is not None:
            if label not in tasks:
                raise ConfigError(f"pipeline has no task labelled {label!r} (labels: {', '.join(map(str, tasks))})")
            chosen = label
        else:
            found = [lab for lab, (klass, _) in tasks.items() if klass.rsplit(".", 1)[-1] in cls._lsst_tasks]
            if len(found) != 1:
                what = f"several {' / '.join(cls._lsst_tasks)} tasks ({', '.join(found)})" if found else f"no {' / '.join(cls._lsst_tasks) or cls.__name__} task"
                raise ConfigError(f"pipeline has {what}: name the task label (labels: {', '.join(map(str, tasks))})")
            chosen = found[0]
        cfg = cls()
        where = f"pipeline task {chosen!r}, "
        if instrument is not None:
            _apply_instrument_overrides(cfg, instrument, tasks[chosen][0], where)
        for block in tasks[chosen][1]:
            if not isinstance(block, dict):
                raise ConfigError(f"{where}config blocks must be mappings, got {block!r}")
            if block.get("dataId") is not None:
                raise ConfigError(f"{where}a config block with a dataId: pipetask does not support specializing a config on a data ID either")
            # pipetask's order within a block (pipe_base _buildTaskDef): the files, then the
            # python code, then the field: value keys, whatever order the YAML lists them in
            # (a relative path in a file: entry or a python block's config.load is read from
            # the working directory, as pipetask reads it: pex_config resolves a top-level
            # relative load against the working directory, not the pipeline's folder)
            files = block.get("file") or []
            for f in files if isinstance(files, list) else [files]:
                target = Path(os.path.expandvars(str(f)))
                if "$" in str(target):
                    raise ConfigError(f"{where}config file {f!r}: environment variable not set")
                cfg._load_pex_file(PexStatement(0, "", str(target), "load"), where, None, ())
            if block.get("python") is not None:
                cfg._apply_statements(parse_pex_override(str(block["python"])), f"{where}python block ", None, ())
            for key, value in block.items():
                if key in ("file", "python", "dataId"):
                    continue
                if isinstance(value, str) and value.startswith("parameters."):
                    name = value[len("parameters."):]
                    if name not in params:
                        raise ConfigError(f"{where}{key}: pipeline parameter {name!r} is not defined")
                    value = params[name]
                cfg._apply_statements([PexStatement(0, str(key), pipetask_value(value))], f"{where}key ", None, ())
        cfg.validate()
        return cfg

    @classmethod
    def from_pex_override(cls, text: str, base: "LsstConfig | None" = None, path: str | Path | None = None) -> "LsstConfig":
        """Apply an override file's statements to ``base`` (default: LSST defaults).

        ``path`` (the file ``text`` came from) anchors ``config.load`` of a relative file.
        See :func:`parse_pex_override` for what is read; nothing is executed.
        """
        cfg = cls() if base is None else base.copy()
        cfg._apply_pex(text, Path(path) if path is not None else None, seen=())
        cfg.validate()
        return cfg

    def _apply_pex(self, text: str, path: Path | None, seen: tuple, prefix: str = "", root: str = "config") -> None:
        where = f"{path.name}, " if path is not None else ""
        try:
            statements = parse_pex_override(text, root)
        except ConfigError as exc:
            # the parser knows lines, not files: a loaded file's error must say which file
            raise ConfigError(f"{where}{exc}") from None
        self._apply_statements(statements, where, path, seen, prefix)

    def _apply_statements(self, statements: list["PexStatement"], where: str, path: Path | None, seen: tuple, prefix: str = "") -> None:
        # LSST fields with no effect here are collected over the whole read (files it loads
        # included) and named in one warning: a saved pex_config dump holds dozens of them
        outer = getattr(self, "_no_effect_seen", None) is None
        if outer:
            object.__setattr__(self, "_no_effect_seen", [])
        try:
            self._apply_statements_inner(statements, where, path, seen, prefix)
        finally:
            if outer:
                seen_fields = self._no_effect_seen
                object.__setattr__(self, "_no_effect_seen", None)
                if len(seen_fields) == 1:
                    w, st = seen_fields[0]
                    warn(f"{w}{_at(st)}LSST field config.{st.target} has no effect in diffstack; ignored")
                elif seen_fields:
                    names = list(dict.fromkeys(_no_effect_name(st.target) for _, st in seen_fields))
                    shown = ", ".join(f"config.{n}" for n in names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
                    warn(f"{where}{len(seen_fields)} LSST fields with no effect in diffstack ignored: {shown}")

    def _apply_statements_inner(self, statements: list["PexStatement"], where: str, path: Path | None, seen: tuple, prefix: str = "") -> None:
        rename = {v: k for k, v in self._pex_names.items()}
        for st in statements:
            if prefix:
                # a file loaded into a sub-config: its "config" is that sub-config
                st = st._replace(target=f"{prefix}.{st.target}" if st.target else prefix)
            if st.op == "load":
                self._load_pex_file(st, where, path, seen)
                continue
            if st.op == "assert_type":
                self._check_asserted_class(st, where)
                continue
            dotted = self._pex_target(st, where)
            if dotted is None:
                continue
            parts = dotted.split(".")
            dotted = ".".join([rename.get(parts[0], parts[0])] + parts[1:])
            kind = self._unmodeled(dotted.split("."))
            if kind is not None and kind[0] == "none":
                self._no_effect_seen.append((where, st))
                continue
            if st.op == "retarget":
                raise ConfigError(f"{where}{_at(st)}config.{st.target}.retarget(...): diffstack implements only LSST's default subtask there")
            if kind is not None:
                # an LSST field diffstack does not implement: at LSST's default it changes
                # nothing (that is what runs here); any other value is named
                default = kind[1]
                value = st.value if st.op == "set" else _list_op(default, st.op, st.value, dotted)
                if not _same(value, default):
                    warn(f"{where}{_at(st)}config.{st.target} = {value!r} is not implemented in diffstack: it runs as LSST's default, {default!r}")
                continue
            try:
                if st.op == "set":
                    self.set_dotted(dotted, st.value)
                else:
                    self.set_dotted(dotted, _list_op(self.get_dotted(dotted), st.op, st.value, dotted))
            except ConfigError as exc:
                raise ConfigError(f"{where}{_at(st)}{exc}") from None
            owner, _, leaf = dotted.rpartition(".")
            obj = self.get_dotted(owner) if owner else self
            if leaf in type(obj)._lsst_inert and not _same(getattr(obj, leaf), obj.param[leaf].default):
                warn(f"{where}{_at(st)}config.{st.target} = {getattr(obj, leaf)!r} is kept but changes nothing here. {obj.param[leaf].doc}")

    def _unmodeled(self, parts: list[str]) -> tuple[str, Any] | None:
        """How an LSST field that is not a diffstack field is treated: ``("none", None)`` for
        one with no effect here (logging, butler connections, subtasks diffstack does not run,
        peak finding), ``("default", d)`` for one diffstack does not implement, whose LSST
        default ``d`` is what runs here; None for a diffstack field (or an unknown name, which
        setting it then reports)."""
        obj: LsstConfig = self
        for i, name in enumerate(parts):
            if name in obj.param and name != "name":
                sub = getattr(obj, name)
                if isinstance(sub, LsstConfig) and i < len(parts) - 1:
                    obj = sub
                    continue
                return None
            if name in type(obj)._lsst_no_effect:
                return ("none", None)
            rest = ".".join(parts[i:])
            if rest in type(obj)._lsst_unimplemented:
                return ("default", type(obj)._lsst_unimplemented[rest])
            return None
        return None

    def _check_asserted_class(self, st: "PexStatement", where: str) -> None:
        """A dump's ``assert type(config) is <class>``: the class must be this config's (or the
        sub-config's it is loaded into), by diffstack's name or LSST's; pex_config would stop
        with an AssertionError otherwise."""
        obj = self.get_dotted(st.target) if st.target else self
        name = st.value.rsplit(".", 1)[-1]
        known = {n for n, c in CONFIG_CLASSES.items() if c is type(obj)} | {type(obj).__name__}
        if name not in known:
            lsst = sorted(known - {type(obj).__name__}) or [type(obj).__name__]
            raise ConfigError(f"{where}{_at(st)}the file is a saved {st.value} (its 'assert type(config) is ...'), not a {lsst[0]}{' for config.' + st.target if st.target else ''}: pex_config would stop here with an AssertionError")

    def _pex_target(self, st: "PexStatement", where: str) -> str | None:
        """The dotted field a statement sets (None: nothing to do); subclasses map LSST's
        registry spellings onto their fields."""
        if "[" in st.target:
            raise ConfigError(f"{where}{_at(st)}unknown config group in config.{st.target} (no registry there in {type(self).__name__})")
        return st.target

    def _load_pex_file(self, st: "PexStatement", where: str, path: Path | None, seen: tuple) -> None:
        call = f"config.{st.target}.load" if st.target else "config.load"
        target = Path(st.value)
        if not target.is_absolute():
            target = (path.parent if path is not None else Path.cwd()) / target
        target = target.resolve()
        if target in seen or len(seen) > 16:
            raise ConfigError(f"{where}{_at(st)}{call}({st.value!r}) loads itself again (a cycle) or nests more than 16 files deep")
        if not target.is_file():
            raise ConfigError(f"{where}{_at(st)}{call}: no such file {target}")
        self._apply_pex(_config_text(target, f"{where}{_at(st)}{call}: file"), target, seen + (target,), st.target)


def _expression(node: ast.AST) -> Any:
    # pipe_base's ConfigExpressionParser: literals, lists, tuples, sets, dicts, unary minus; a
    # bare name is its own string (names of the config's module do not arise here)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.List):
        return [_expression(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_expression(e) for e in node.elts)
    if isinstance(node, ast.Set):
        return {_expression(e) for e in node.elts}
    if isinstance(node, ast.Dict):
        return {_expression(k): _expression(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -1 * _expression(node.operand)
    raise ValueError("not a literal expression")


def pipetask_value(value: Any) -> Any:
    """A config value as pipetask reads it from a pipeline key or a ``-c name=value`` option.

    A string is parsed as a Python literal expression in which a bare name stands for its own
    text (``"3"`` -> 3, ``"[NO_DATA, BAD]"`` -> ``['NO_DATA', 'BAD']``, ``"MEANCLIP"`` ->
    ``'MEANCLIP'``, ``"-2.5"`` -> -2.5); what does not parse stays the string.  The string
    items of a list or dict are parsed the same way.  This is pipe_base's
    ``ConfigOverrides._parser`` with its ``ConfigExpressionParser``.
    """

    def one(v: Any) -> Any:
        if not isinstance(v, str):
            return v
        try:
            return _expression(ast.parse(v, mode="eval").body)
        except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            return v

    if isinstance(value, dict):
        return {k: one(v) for k, v in value.items()}
    if isinstance(value, list):
        return [one(v) for v in value]
    return one(value)


def parse_override_option(text: str) -> tuple[str | None, str, Any]:
    """``[label:]name=value`` (pipetask's ``-c``) as ``(label or None, name, value)``, the value
    read by :func:`pipetask_value`."""
    head, sep, raw = text.partition("=")
    if not sep or not head.strip():
        raise ConfigError(f"config override {text!r}: expected [label:]field=value")
    label, _, name = head.strip().rpartition(":")
    return (label or None), name.strip(), pipetask_value(raw.strip())


def _package_dir(package: str) -> tuple[str, str | None]:
    """``(variable, value)`` of the EUPS variable that locates ``package`` (``obs_lsst`` ->
    ``OBS_LSST_DIR``), as ``lsst.utils.getPackageDir`` reads it; None when it is not set."""
    var = f"{package.upper()}_DIR"
    return var, os.environ.get(var)


#: obs packages' instrument classes: (package, policy folder or None), the folders their
#: ``Instrument.applyConfigOverrides`` reads (``configPaths``: the package's config folder,
#: then its policy subfolder)
_INSTRUMENT_CONFIG_DIRS: dict[str, tuple[str, str | None]] = {
    "LsstCam": ("obs_lsst", "lsstCam"),
    "LsstCamSim": ("obs_lsst", "lsstCamSim"),
    "LsstComCam": ("obs_lsst", "comCam"),
    "LsstComCamSim": ("obs_lsst", "comCamSim"),
    "LsstCamImSim": ("obs_lsst", "imsim"),
    "Latiss": ("obs_lsst", "latiss"),
    "HyperSuprimeCam": ("obs_subaru", "hsc"),
    "DarkEnergyCamera": ("obs_decam", None),
}
#: the tasks' ``_DefaultName``, the file name their instrument overrides have
_TASK_DEFAULT_NAMES = {"CompareWarpAssembleCoaddTask": "compareWarpAssembleCoadd", "AssembleCoaddTask": "assembleCoadd"}


def _obs_config_root(package: str, root: str) -> Path:
    """The config folder of an obs package checkout: ``config/`` (older layout) or, where the
    package keeps it with its Python code (obs_lsst's ``resource://lsst.obs.lsst/resources/
    config``), ``python/lsst/obs/<name>/resources/config``."""
    inside = Path(root, "python", "lsst", "obs", package.split("_", 1)[-1], "resources", "config")
    return inside if inside.is_dir() else Path(root, "config")


def _apply_instrument_overrides(cfg: "LsstConfig", instrument: str, task_class: str, where: str) -> None:
    """What pipetask applies before a pipeline's own config blocks: the instrument's obs
    package overrides for the task, ``<name>.py`` in its config folder then in the policy
    subfolder (``Instrument.applyConfigOverrides``), read from ``$<PACKAGE>_DIR`` as EUPS sets
    it.  Without the variable (or for an instrument or task not known here) a warning says
    what pipetask would add that is not applied."""
    name = _TASK_DEFAULT_NAMES.get(task_class.rsplit(".", 1)[-1])
    if name is None:
        return
    inst = instrument.rsplit(".", 1)[-1]
    if inst not in _INSTRUMENT_CONFIG_DIRS:
        warn(f"{where}instrument {instrument}: its obs package's overrides for {name} (which pipetask applies first) are not applied: diffstack knows the config folders of {', '.join(_INSTRUMENT_CONFIG_DIRS)}")
        return
    package, policy = _INSTRUMENT_CONFIG_DIRS[inst]
    var, root = _package_dir(package)
    files = [f"{name}.py"] + ([f"{policy}/{name}.py"] if policy else [])
    if root is None:
        warn(f"{where}instrument {inst}: pipetask first applies {package}'s config overrides {' and '.join(files)}; set ${var} to a {package} checkout to apply them here")
        return
    base = _obs_config_root(package, root)
    for rel in files:
        f = base / rel
        if f.is_file():
            cfg._load_pex_file(PexStatement(0, "", str(f.absolute()), "load"), f"{where}instrument override ", None, ())


def _pipeline_document(location: str, where: str) -> tuple[dict, Path]:
    """An imported pipeline YAML: ``location`` with environment variables expanded, a relative
    path taken from the working directory (pipe_base makes a ResourcePath of it)."""
    import yaml

    expanded = os.path.expandvars(location)
    if "$" in expanded:
        raise ConfigError(f"{where}imports location {location!r}: environment variable not set (e.g. $DRP_PIPE_DIR, which EUPS sets; point it at your checkout)")
    p = Path(expanded).absolute()
    if not p.is_file():
        raise ConfigError(f"{where}imports location {location!r}: no such file {p} (a relative location is read from the working directory, as pipetask reads it)")
    try:
        data = yaml.safe_load(_config_text(p, "imported pipeline"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}imported pipeline {p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}imported pipeline {p} is not a mapping")
    return data, p


def _resolve_pipeline(data: dict, path: Path | None, seen: tuple) -> tuple[dict, dict, dict, str | None]:
    """A pipeline's tasks after its ``imports``, as pipe_base's ``PipelineIR`` merges them:
    ``{label: (class, [config blocks])}``, the merged ``parameters``, the labeled subsets
    ``{name: set of labels}`` and the instrument (the document's, else its imports').

    Imported pipelines are read recursively, each filtered by its ``include`` or ``exclude``
    labels (a labeled subset stands for its labels) and relabelled by its ``rename``; a label
    imported twice is an error; a task the document itself declares adds its config blocks
    after the imported ones when its class is the same, and replaces the imported task when it
    is not.  The document's parameters and subsets override imported ones.
    """
    where = f"{path.name}: " if path is not None else ""
    raw_tasks = data.get("tasks") or {}
    if not isinstance(raw_tasks, dict):
        raise ConfigError(f"{where}pipeline 'tasks' must be a mapping of label -> task")
    own: dict[str, tuple[str, list]] = {}
    for lab, entry in raw_tasks.items():
        if isinstance(entry, str):
            entry = {"class": entry}
        if not isinstance(entry, dict) or "class" not in entry:
            raise ConfigError(f"{where}pipeline task {lab!r} has no 'class'")
        blocks = entry.get("config")
        blocks = [] if blocks is None else [blocks] if isinstance(blocks, dict) else list(blocks)
        own[str(lab)] = (str(entry["class"]), blocks)
    if "inherits" in data:
        raise ConfigError(f"{where}the 'inherits' key is not supported (pipetask refuses it too): use 'imports'")
    own_subsets = {}
    raw_subsets = data.get("subsets") or {}
    if not isinstance(raw_subsets, dict):
        raise ConfigError(f"{where}pipeline 'subsets' must be a mapping of name -> labels")
    for name, v in raw_subsets.items():
        members = v.get("subset", []) if isinstance(v, dict) else v
        own_subsets[str(name)] = {str(m) for m in ([members] if isinstance(members, str) else members or [])}
    imports = data.get("imports") or []
    imports = imports if isinstance(imports, list) else [imports]
    tasks: dict[str, tuple[str, list]] = {}
    params: dict = {}
    subsets: dict[str, set] = {}
    instrument = data.get("instrument")
    if isinstance(instrument, list):
        raise ConfigError(f"{where}only one top-level instrument can be defined in a pipeline")
    instrument = None if instrument is None else str(instrument)
    for imp in imports:
        imp = {"location": imp} if isinstance(imp, str) else imp
        if not isinstance(imp, dict) or "location" not in imp:
            raise ConfigError(f"{where}an imports entry must be a location or a mapping with 'location', got {imp!r}")
        loc = imp["location"]
        include, exclude = imp.get("include"), imp.get("exclude")
        include = [include] if isinstance(include, str) else include
        exclude = [exclude] if isinstance(exclude, str) else exclude
        for key, val in (("include", include), ("exclude", exclude)):
            if val is not None and not (isinstance(val, list) and all(isinstance(v, str) for v in val)):
                raise ConfigError(f"{where}imports {loc!r}: '{key}' must be a label or a list of labels, got {val!r}")
        if include and exclude:
            raise ConfigError(f"{where}imports {loc!r}: both 'include' and 'exclude' given (pipetask refuses that too)")
        rename = imp.get("rename") or {}
        if not isinstance(rename, dict):
            raise ConfigError(f"{where}imports {loc!r}: 'rename' must map labels to new labels, got {rename!r}")
        if len(set(rename.values())) != len(rename) or set(rename.values()) & set(rename):
            raise ConfigError(f"{where}imports {loc!r}: 'rename' must map distinct labels to distinct new labels")
        sub, sub_path = _pipeline_document(str(loc), where)
        if sub_path in seen or len(seen) > 16:
            raise ConfigError(f"{where}imports {loc!r}: the pipeline imports itself (a cycle) or nests more than 16 deep")
        sub_tasks, sub_params, sub_subsets, sub_instrument = _resolve_pipeline(sub, sub_path, seen + (sub_path,))
        if "instrument" in imp:  # an import may set or (with None) drop the instrument
            sub_instrument = None if imp["instrument"] in (None, "None") else str(imp["instrument"])
        if sub_instrument is not None:
            if instrument is None:
                instrument = sub_instrument
            elif instrument != sub_instrument:
                raise ConfigError(f"{where}only one instrument can be declared in a pipeline or its imports: {instrument} and {sub_instrument} ({loc!r})")
        # pipe_base's rule, to the letter (an empty include or exclude list keeps nothing)
        labels = {lab for lab in sub_tasks if (include and lab in include) or (exclude and lab not in exclude) or (include is None and exclude is None)}
        if include is not None:
            for n in set(include) & sub_subsets.keys():
                labels |= sub_subsets[n]
        elif exclude is not None:
            for n in set(exclude) & sub_subsets.keys():
                labels -= sub_subsets[n]
        picked = {}
        for lab in sub_tasks:
            if lab in labels:
                new = rename.get(lab, lab)
                if new != lab and new in sub_tasks:
                    raise ConfigError(f"{where}imports {loc!r}: cannot rename {lab!r} to the existing label {new!r}")
                picked[new] = sub_tasks[lab]
        dup = tasks.keys() & picked.keys()
        if dup:
            raise ConfigError(f"{where}task labels imported more than once: {', '.join(sorted(dup))}")
        tasks.update({lab: (k, list(b)) for lab, (k, b) in picked.items()})
        params.update(sub_params)
        subsets.update({n: m & picked.keys() for n, m in sub_subsets.items()})
    for lab, (klass, blocks) in own.items():
        if lab in tasks and tasks[lab][0] == klass:
            tasks[lab][1].extend(blocks)
        else:
            tasks[lab] = (klass, blocks)
    own_params = data.get("parameters") or {}
    if not isinstance(own_params, dict):
        raise ConfigError(f"{where}the pipeline's 'parameters' must be a mapping")
    params.update(own_params)
    subsets.update(own_subsets)
    return tasks, params, subsets, instrument


def _no_effect_name(target: str) -> str:
    """A no-effect field's name as listed in the warning: a group stands for its fields."""
    parts = target.split(".")
    for i, p in enumerate(parts):
        if p in _GROUP_NAMES:
            return ".".join(parts[: i + 1]) + ".*"
    return target


#: LSST groups (sub-configs) whose fields are all listed as one in the no-effect warning
_GROUP_NAMES = {"connections", "select", "inputRecorder", "inputMapper", "scaleZeroPoint", "modelPsf", "background", "tempLocalBackground", "tempWideBackground"}


def _at(st: "PexStatement") -> str:
    # override files have lines; a pipeline YAML key (line 0) is named by its key instead
    return f"line {st.line}: " if st.line else (f"{st.target}: " if st.target else "")


def _list_op(current: Any, op: str, value: Any, dotted: str) -> list:
    """``current`` (a list field) after ``append``/``extend``/``remove``/``+=`` of ``value``."""
    if not isinstance(current, (list, tuple)):
        raise ConfigError(f"{dotted} is not a list field; '{op}' needs one")
    out = list(current)
    if op == "append":
        out.append(value)
    elif op == "extend":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{dotted}: extend/+= needs a list, got {value!r}")
        out.extend(value)
    elif op == "remove":
        if value not in out:
            raise ConfigError(f"{dotted}.remove({value!r}): {value!r} is not in {out}")
        out.remove(value)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b and type(a) is type(b) or (isinstance(a, float) and isinstance(b, float) and a == b)


def _literal(value: Any) -> str:
    """Python literal for a pex_config value (floats always with a decimal point)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


class PexStatement(NamedTuple):
    """One statement of an override file: ``config.<target> <op> <value>``."""

    line: int
    target: str  # dotted name after ``config.``; a registry key is kept as ``name[key]``
    value: Any
    op: str = "set"  # set | append | extend | remove | retarget | load


_LIST_METHODS = ("append", "extend", "remove")


def parse_pex_override(text: str, root: str = "config") -> list[PexStatement]:
    """Parse an override file into :class:`PexStatement` s without executing it.

    What a ``pipetask`` override file (an ``obs_*`` package's ``config/*.py``) says about
    fields is read from its syntax tree:

    * ``config.a.b = <literal>``; ``config.a.b += [<literals>]``;
    * ``config.a.b.append(<literal>)``, ``.extend([...])``, ``.remove(<literal>)``;
    * registry entries, ``config.subtract['zogy'].zogyConfig.x = ...`` (target ``subtract[zogy]...``);
    * ``config.a.retarget(...)`` (reported, so the caller can refuse or ignore it);
    * ``config.load(<path>)`` with a string path, or LSST's idiom
      ``os.path.join(os.path.dirname(__file__), "<file>", ...)`` (relative to the file), or
      ``os.path.join(getPackageDir("<package>"), "<file>", ...)`` (under ``$<PACKAGE>_DIR``,
      where EUPS and ``lsst.utils.getPackageDir`` find a package);
    * ``config.a.load(<path>)``: the file applied to the sub-config ``a`` (inside it,
      ``config`` is that sub-config, as in pex_config; target ``a``, op ``load``);
    * imports and docstrings are skipped (imports are never run; they only matter to
      statements, which are all checked here).

    ``root`` is the name the file gives the config (pex_config's ``root`` argument).  With the
    default, a file that names its config ``root`` (old ``obs_*`` files) is refused with a
    :class:`ConfigError` that says so: current pipetask runs files with only ``config`` bound.

    Anything else (other names, calls, comprehensions, non-literal values) raises
    :class:`ConfigError` naming its line.
    """
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise ConfigError(f"line {exc.lineno}: not valid Python syntax: {exc.msg}") from None
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    if root == "config" and "root" in names and "config" not in names:
        # old obs_* files said root.<field>; pex_config once retried such files with "root"
        # bound, but no longer does (it runs a file with only "config" defined: NameError)
        raise ConfigError("the file names its config 'root' (the spelling of old obs_* files); current pex_config runs override files with only 'config' defined, so pipetask would fail on it: write config.<field>")
    out = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            out.append(PexStatement(node.lineno, _config_target(node.targets[0], node.lineno, root), _literal_value(node.value, node.lineno, node.targets[0], root)))
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add):
            out.append(PexStatement(node.lineno, _config_target(node.target, node.lineno, root), _literal_value(node.value, node.lineno, node.target, root), "extend"))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute):
            out.append(_call_statement(node.value, node.lineno, root))
        elif isinstance(node, ast.Assert):
            out.append(PexStatement(node.lineno, "", _asserted_class(node, root), "assert_type"))
        else:
            raise ConfigError(f"line {node.lineno}: only assignments to config.<field>, list methods, retarget and config.load are read; found {type(node).__name__}")
    return out


def _dotted_name(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id] + parts[::-1]) if isinstance(node, ast.Name) else None


def _asserted_class(node: ast.Assert, root: str = "config") -> str:
    """The class a pex_config dump asserts its config to be: ``assert type(config) is
    lsst.x.YConfig, "..."`` (``==`` in older dumps), the line ``Config.save`` writes first."""
    t = node.test
    if (isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.ops[0], (ast.Is, ast.Eq))
            and isinstance(t.left, ast.Call) and isinstance(t.left.func, ast.Name) and t.left.func.id == "type"
            and len(t.left.args) == 1 and isinstance(t.left.args[0], ast.Name) and t.left.args[0].id == root and not t.left.keywords):
        name = _dotted_name(t.comparators[0])
        if name is not None:
            return name
    raise ConfigError(f"line {node.lineno}: the only assert read is pex_config's 'assert type({root}) is <ConfigClass>'")


def _config_target(t: ast.AST, lineno: int, root: str = "config") -> str:
    parts = []
    while True:
        if isinstance(t, ast.Attribute):
            parts.append(t.attr)
            t = t.value
        elif isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and isinstance(t.slice.value, str) and isinstance(t.value, ast.Attribute):
            # a registry entry: config.subtract['zogy'] -> "subtract[zogy]"
            parts.append(f"{t.value.attr}[{t.slice.value}]")
            t = t.value.value
        else:
            break
    if not isinstance(t, ast.Name) or t.id != root or not parts:
        raise ConfigError(f"line {lineno}: assignment target must be {root}.<field>")
    return ".".join(reversed(parts))


def _literal_value(node: ast.AST, lineno: int, target: ast.AST | None = None, root: str = "config") -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        what = f"value of config.{_config_target(target, lineno, root)}" if target is not None else "argument"
        raise ConfigError(f"line {lineno}: {what} is not a literal") from None


def _call_statement(call: ast.Call, lineno: int, root: str = "config") -> PexStatement:
    method = call.func.attr
    owner = call.func.value
    if method == "load":
        # config.load(path), or a sub-config's: config.a.load(path) applies the file to a
        target = "" if isinstance(owner, ast.Name) and owner.id == root else _config_target(owner, lineno, root)
        if len(call.args) != 1 or call.keywords:
            raise ConfigError(f"line {lineno}: config{'.' + target if target else ''}.load takes one path")
        return PexStatement(lineno, target, _load_path(call.args[0], lineno), "load")
    target = _config_target(owner, lineno, root)
    if method == "retarget":
        return PexStatement(lineno, target, None, "retarget")
    if method in _LIST_METHODS and len(call.args) == 1 and not call.keywords:
        return PexStatement(lineno, target, _literal_value(call.args[0], lineno), method)
    raise ConfigError(f"line {lineno}: config.{target}.{method}(...) is not read (only append, extend, remove, retarget and load)")


def _load_path(node: ast.AST, lineno: int) -> str:
    """A literal path; ``os.path.join(os.path.dirname(__file__), "a", ...)`` as "a/..."; or
    ``os.path.join(getPackageDir("pkg"), "a", ...)`` as an absolute path under ``$PKG_DIR``
    (``lsst.utils.getPackageDir`` reads EUPS's ``<PACKAGE>_DIR`` variable, and so does this)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value

    def is_call(n, dotted):
        f = n.func if isinstance(n, ast.Call) else None
        names = []
        while isinstance(f, ast.Attribute):
            names.append(f.attr)
            f = f.value
        return isinstance(f, ast.Name) and ".".join([f.id] + names[::-1]) == dotted

    if is_call(node, "os.path.join") and node.args:
        head, rest = node.args[0], node.args[1:]
        first = head.args if isinstance(head, ast.Call) else []
        parts = [a.value for a in rest if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if len(first) == 1 and rest and len(parts) == len(rest):
            if is_call(head, "os.path.dirname") and isinstance(first[0], ast.Name) and first[0].id == "__file__":
                return str(Path(*parts))
            if (is_call(head, "getPackageDir") or is_call(head, "lsst.utils.getPackageDir")) and isinstance(first[0], ast.Constant) and isinstance(first[0].value, str):
                var, root = _package_dir(first[0].value)
                if root is None:
                    raise ConfigError(f"line {lineno}: config.load(getPackageDir({first[0].value!r}), ...) needs ${var} (EUPS sets it; point it at your {first[0].value} checkout)")
                return str(Path(root, *parts).absolute())
    raise ConfigError(f"line {lineno}: config.load path must be a string, os.path.join(os.path.dirname(__file__), '<file>') or os.path.join(getPackageDir('<package>'), '<file>')")


# ====================================================================== subtask configs
class InterpImageConfig(LsstConfig):
    """``InterpImageTask`` (interpolation over NO_DATA after stacking)."""

    # the model PSF feeds LSST's PSF-weighted interpolation, which diffstack replaces (see interp)
    _lsst_no_effect = LsstConfig._lsst_no_effect | {"modelPsf"}
    _lsst_int_fields = frozenset({"transpose"})

    useFallbackValueAtEdge = param.Boolean(True, doc="Use a fallback value at the image edges instead of extrapolating.")
    fallbackValueType = param.Selector(objects=["MEAN", "MEDIAN", "MEANCLIP", "USER"], default="MEDIAN", doc="Statistic of the image used as the edge fallback.")
    fallbackUserValue = param.Number(0.0, doc="Fallback value when fallbackValueType is USER.")
    negativeFallbackAllowed = param.Boolean(False, doc="Allow a negative fallback value (else clamped to 0).")
    transpose = param.Boolean(False, doc="Interpolate along columns instead of rows (DECam sets True).")


class CoaddPsfConfig(LsstConfig):
    """``CoaddPsfConfig`` (recorded for export; diffstack's CoaddPsf does not resample)."""

    warpingKernelName = param.Selector(objects=["bilinear", "lanczos2", "lanczos3", "lanczos4", "lanczos5"], default="lanczos3", doc="Warping kernel of the CoaddPsf.")
    cacheSize = param.Integer(0, bounds=(0, None), doc="CoaddPsf kernel-image cache size (AssembleCoadd sets 0).")


class DetectionConfig(LsstConfig):
    """The ``SourceDetectionTask`` fields CompareWarp's detection uses."""

    # background re-estimation and the temporary local background change LSST's copy of the
    # image and the peaks, not the footprints; adjustBackground only feeds that re-estimation
    _lsst_no_effect = LsstConfig._lsst_no_effect | {"adjustBackground", "doApplyFlatBackgroundRatio", "background", "tempLocalBackground", "tempWideBackground", "nPeaksMaxSimple"}
    _lsst_unimplemented = {"doTempWideBackground": False, "excludeMaskPlanes": []}

    thresholdValue = param.Number(5.0, bounds=(0, None), inclusive_bounds=(False, True), doc="Detection threshold, in units of thresholdType.")
    thresholdType = param.Selector(objects=["variance", "stdev", "value", "pixel_stdev"], default="pixel_stdev", doc="How the threshold is interpreted; pixel_stdev = per-pixel sqrt(variance).")
    thresholdPolarity = param.Selector(objects=["positive", "negative", "both"], default="positive", doc="Which sign of deviation to detect.")
    includeThresholdMultiplier = param.Number(1.0, bounds=(0, None), inclusive_bounds=(False, True), doc="A footprint extends to the threshold but is kept only if one of its pixels reaches this multiple of it (afw includeThresholdMultiplier).")
    minPixels = param.Integer(1, bounds=(0, None), doc="Minimum footprint area (pixels) before growth.")
    nSigmaToGrow = param.Number(2.4, bounds=(0, None), doc="Grow footprints by this many PSF sigmas.")
    isotropicGrow = param.Boolean(True, doc="Grow with afw's circular stencil; False: its Manhattan stencil (|dx| + |dy| <= r).")
    combinedGrow = param.Boolean(True, doc="Grow all footprints together, so that those the growth joins merge; False: each grown on its own (they may overlap). Moot for detect, whose footprints findArtifacts merges anyway.")
    returnOriginalFootprints = param.Boolean(False, doc="Return the ungrown footprints (the growth then has no effect).")
    doTempLocalBackground = param.Boolean(True, doc="Subtract a temporary local background from the smoothed image after thresholding, to re-detect the peaks inside each footprint (LSST updatePeaks); footprints are unchanged, so it has no effect on CompareWarp.")
    reEstimateBackground = param.Boolean(True, doc="Re-estimate the background after detection (modifies only LSST's clone of the template; no effect on the footprints).")
    nSigmaForKernel = param.Number(7.0, bounds=(0, None), inclusive_bounds=(False, True), doc="Smoothing-kernel full width in PSF sigmas.")
    statsMask = param.List(["BAD", "SAT", "EDGE", "NO_DATA"], item_type=str, doc="Mask planes left out of the image's clipped standard deviation (thresholdType='stdev' only).")


class ScaleVarianceConfig(LsstConfig):
    """``ScaleVarianceTask``: rescale the variance plane to match the pixel scatter."""

    # the temporary background subtracted before the factor is measured: LSST's settings for it
    _lsst_unimplemented = {f"background.{k}": v for k, v in {"binSize": 32, "binSizeX": 0, "binSizeY": 0, "useApprox": False, "statisticsProperty": "MEANCLIP", "algorithm": "AKIMA_SPLINE", "undersampleStyle": "REDUCE_INTERP_ORDER", "isNanSafe": False, "approxOrderX": 6, "approxOrderY": -1, "weighting": True, "doApplyFlatBackgroundRatio": False, "ignoredPixelMask": ["DETECTED", "DETECTED_NEGATIVE", "BAD", "SAT", "NO_DATA", "INTRP"]}.items()}

    maskPlanes = param.List(["DETECTED", "DETECTED_NEGATIVE", "BAD", "SAT", "NO_DATA", "INTRP"], item_type=str, doc="Pixels with these planes are ignored.")
    limit = param.Number(10.0, bounds=(0, None), inclusive_bounds=(False, True), doc="Largest acceptable variance factor.")


class MaskStreaksConfig(LsstConfig):
    """``MaskStreaksTask`` fields diffstack's Hough streak finder uses (others are LSST-only)."""

    # LSST's line-profile fit (kernel heights, Moffat width, chi^2 iterations, its own mask
    # planes) has no counterpart in diffstack's Hough finder (see toolkit.streaks)
    _lsst_inert = frozenset({"nSigmaMask", "rhoBinSize"})
    _lsst_no_effect = LsstConfig._lsst_no_effect | {"minimumKernelHeight", "clusterMinimumDeviation", "delta", "nSigma", "invSigma", "footprintThreshold", "dChi2Tolerance", "maxFitIter", "detectedMaskPlane", "streaksMaskPlane", "badMaskPlanes", "maxStreakWidth"}

    absMinimumKernelHeight = param.Number(5.0, bounds=(0, None), doc="Minimum streak length scale (pixels).")
    clusterMinimumSize = param.Integer(50, bounds=(1, None), doc="Minimum number of edge pixels supporting a line.")
    nSigmaMask = param.Number(5.0, bounds=(0, None), doc="LSST: mask the streak out to this many sigmas of its fitted profile. No effect here: with no profile fit, diffstack masks the detections' core width (docs/lsst-mapping.md).")
    rhoBinSize = param.Number(40.0, bounds=(0, None), inclusive_bounds=(False, True), doc="LSST: rho bin (pixels) for clustering Hough lines. No effect here: scikit-image's Hough transform uses 1-px rho bins, and each line is refitted to its pixels.")
    thetaBinSize = param.Number(2.0, bounds=(0, None), inclusive_bounds=(False, True), doc="Hough theta bin (degrees).")
    onlyMaskDetected = param.Boolean(True, doc="Only mask pixels that are DETECTED.")


# ====================================================================== AssembleCoadd
class AssembleCoaddConfig(LsstConfig):
    """LSST ``AssembleCoaddConfig`` (after ``setDefaults``)."""

    # visit selection, input records, the HealSparse input map and zero-point rescaling (the
    # inputs here are already on one flux scale); includeCalibVar is deprecated and ignored by LSST
    _lsst_no_effect = LsstConfig._lsst_no_effect | {"select", "inputRecorder", "inputMapper", "scaleZeroPoint", "includeCalibVar", "doScaleZeroPoint"}

    _diffstack_only = ()
    _lsst_tasks = ("AssembleCoaddTask",)

    coaddName = param.String("deep", doc="Coadd name used in dataset names.")
    badMaskPlanes = param.List(["NO_DATA", "BAD", "SAT", "EDGE"], item_type=str, doc="Inputs with any of these planes are excluded from the stack.")
    warpType = param.Selector(objects=["direct", "psfMatched"], default="direct", doc="Which warp type is stacked.")
    subregionSize = param.NumericTuple((2000, 2000), length=2, doc="(width, height) of the sub-boxes stacked in turn to bound memory.")
    statistic = param.Selector(objects=AFW_PROPERTIES, default="MEANCLIP", doc="Per-pixel stacking statistic (diffstack implements MEAN, MEDIAN, MEANCLIP).")
    doOnlineForMean = param.Boolean(False, doc="With MEAN, accumulate running sums instead of sub-region stacking.")
    sigmaClip = param.Number(3.0, bounds=(0, None), inclusive_bounds=(False, True), doc="N-sigma for clipping (also for the weight estimate).")
    clipIter = param.Integer(2, bounds=(1, None), doc="Clipping iterations (also for the weight estimate).")
    calcErrorFromInputVariance = param.Boolean(True, doc="Coadd variance from the input variances (else from the sample scatter).")
    doInterp = param.Boolean(True, doc="Interpolate over NO_DATA pixels after stacking.")
    interpImage = param.ClassSelector(class_=InterpImageConfig, default=InterpImageConfig(), instantiate=True, doc="InterpImageTask config.")
    doWrite = param.Boolean(True, doc="Persist the coadd (pipeline only).")
    doWriteArtifactMasks = param.Boolean(False, doc="Write per-visit artifact masks (CompareWarp only).")
    doNImage = param.Boolean(False, doc="Produce the nImage map.")
    maskPropagationThresholds = param.Dict({"SAT": 0.1}, doc="Set a plane on the coadd if rejected inputs carrying it exceed this weight fraction.")
    removeMaskPlanes = param.List(["NOT_DEBLENDED"], item_type=str, doc="Clear these planes from every input before stacking.")
    doMaskBrightObjects = param.Boolean(False, doc="Paint BRIGHT_OBJECT from a bright-object catalog.")
    brightObjectMaskName = param.String("BRIGHT_OBJECT", doc="Mask plane name for bright objects.")
    coaddPsf = param.ClassSelector(class_=CoaddPsfConfig, default=CoaddPsfConfig(), instantiate=True, doc="CoaddPsf construction.")
    doSelectVisits = param.Boolean(False, doc="Keep only visits in selectedVisits (pipeline only).")
    doInputMap = param.Boolean(False, doc="Build the HealSparse input map (pipeline only).")
    doAttachTransmissionCurve = param.Boolean(False, doc="Attach the transmission curve (pipeline only).")
    hasFakes = param.Boolean(False, doc="Inputs have fakes injected (pipeline only).")

    def validate(self) -> None:
        super().validate()
        if self.doInterp and self.statistic not in ("MEAN", "MEDIAN", "MEANCLIP", "VARIANCE", "VARIANCECLIP"):
            raise ConfigError(f"statistic={self.statistic!r} with doInterp=True: must be one of MEAN, MEDIAN, MEANCLIP, VARIANCE, VARIANCECLIP")
        # LSST's unstackable list has the typo 'ERROR' (so 'ERRORS' passes there); mirrored
        if self.statistic in ("NOTHING", "ERROR", "ORMASK"):
            raise ConfigError(f"statistic={self.statistic!r} cannot be stacked")
        if self.doWriteArtifactMasks and not isinstance(self, CompareWarpConfig):
            raise ConfigError("doWriteArtifactMasks is only allowed on a CompareWarpConfig")


class CompareWarpConfig(AssembleCoaddConfig):
    """LSST ``CompareWarpAssembleCoaddConfig`` with current (2026) defaults."""

    _lsst_tasks = ("CompareWarpAssembleCoaddTask",)
    _lsst_inert = frozenset({"detectTemplateIterMultiplier", "maxDetectTemplateIter", "streakMaskName"})
    _diffstack_only = ("psfMatchArrayEdge", "psfMatchSpatialKernelOrder")

    assembleStaticSkyModel = param.ClassSelector(class_=AssembleCoaddConfig, default=None, instantiate=True, doc="Static-sky template AssembleCoadd config.")
    detect = param.ClassSelector(class_=DetectionConfig, default=None, instantiate=True, doc="Artifact-candidate detection on each warpDiff.")
    detectTemplate = param.ClassSelector(class_=DetectionConfig, default=None, instantiate=True, doc="Protected-source detection on the template.")
    detectTemplateIterMultiplier = param.Number(1.25, bounds=(1, None), doc="Threshold factor per detectTemplate retry after a background failure. No effect here: diffstack's template detection estimates no background, so it never retries.")
    maxDetectTemplateIter = param.Integer(10, bounds=(1, None), doc="Maximum detectTemplate retries (no effect here, as detectTemplateIterMultiplier).")
    maskStreaks = param.ClassSelector(class_=MaskStreaksConfig, default=None, instantiate=True, doc="Streak finder (doFilterMorphological).")
    streakMaskName = param.String("STREAK", doc="Mask plane the streak finder writes on LSST's temporary warpDiff. No effect on any output: streaks are clipped through CLIPPED.")
    maxNumEpochs = param.Integer(2, bounds=(0, None), doc="Offset term of the broken-line temporal threshold.")
    maxFractionEpochsLow = param.Number(0.4, bounds=(0, 1), doc="Low-N slope of the temporal threshold.")
    maxFractionEpochsHigh = param.Number(0.03, bounds=(0, 1), doc="High-N slope of the temporal threshold.")
    spatialThreshold = param.Number(0.5, bounds=(0, 1), doc="Clip a candidate if the fraction of its pixels that are transient exceeds this (0 clips all, 1 none).")
    doScaleWarpVariance = param.Boolean(True, doc="Rescale PSF-matched warp variance empirically before differencing.")
    scaleWarpVariance = param.ClassSelector(class_=ScaleVarianceConfig, default=None, instantiate=True, doc="ScaleVarianceTask config.")
    doPreserveContainedBySource = param.Boolean(True, doc="Do not clip candidates entirely inside a template footprint.")
    doPrefilterArtifacts = param.Boolean(True, doc="Drop candidates mostly on bad pixels before the epoch count.")
    prefilterArtifactsMaskPlanes = param.List(["NO_DATA", "BAD", "SUSPECT"], item_type=str, doc="Bad planes for the prefilter.")
    prefilterArtifactsRatio = param.Number(0.05, bounds=(0, 1), doc="Keep a candidate only if its good-pixel fraction exceeds this.")
    doFilterMorphological = param.Boolean(False, doc="Also clip streaks found on the warpDiffs, with no temporal test.")
    growStreakFp = param.Number(5.0, bounds=(0, None), doc="Dilate streaks by this many PSF determinant radii.")
    psfMatchArrayEdge = param.Selector(objects=["NO_DATA", "EDGE"], default="NO_DATA", doc="diffstack only, for PSF-matched warps that diffstack makes from the direct warps (none given): what the 10-px frame at the array's edge becomes. NO_DATA (LSST's incomplete-convolution border; the coadd then loses that frame, which is right at a CCD's edge); EDGE (the planes mirrored beyond the edge before the convolution and the frame flagged EDGE; the coadd keeps its direct pixels there, flagged SENSOR_EDGE and INEXACT_PSF, which suits a cutout of a larger patch).")

    psfMatchSpatialKernelOrder = param.Integer(2, bounds=(0, 4), doc="diffstack only, for PSF-matched warps that diffstack makes from the direct warps (none given): the total degree of the matching kernel's variation across a warp whose PSF varies (LSST's makeWarp uses ModelPsfMatchTask's spatialKernelOrder, 2, fitted to kernels on 128-px cells). 0 uses the kernel at the warp's centre everywhere (faster: one convolution per plane instead of about five; a PSF 12 % wider at one side than the other then leaves the matched stars there about 3.5 % off the model's width). A PSF that does not vary gets one kernel either way.")

    def __init__(self, **params: Any) -> None:
        # LSST setDefaults, in order
        base = dict(statistic="MEAN", badMaskPlanes=["NO_DATA", "BAD", "SAT"], removeMaskPlanes=["NOT_DEBLENDED", "EDGE"])
        sky = AssembleCoaddConfig(badMaskPlanes=["NO_DATA"], warpType="psfMatched", statistic="MEANCLIP", sigmaClip=2.5, clipIter=3, calcErrorFromInputVariance=True, doWrite=False)
        det = DetectionConfig(doTempLocalBackground=False, reEstimateBackground=False, returnOriginalFootprints=False, thresholdPolarity="both", thresholdValue=7.5, thresholdType="pixel_stdev", minPixels=4, isotropicGrow=True, nSigmaToGrow=0.4)
        tdet = DetectionConfig(nSigmaToGrow=2.4, thresholdValue=300.0, doTempLocalBackground=True, reEstimateBackground=True, returnOriginalFootprints=False)
        groups = dict(assembleStaticSkyModel=sky, detect=det, detectTemplate=tdet, scaleWarpVariance=ScaleVarianceConfig(), maskStreaks=MaskStreaksConfig())
        nested_overrides = {k: params.pop(k) for k in list(params) if k in groups and isinstance(params[k], dict)}
        for k, v in groups.items():
            params.setdefault(k, v)
        for k, v in base.items():
            params.setdefault(k, v)
        super().__init__(**params)
        for k, v in nested_overrides.items():
            getattr(self, k).update_from_dict(v, prefix=f"{k}.")

    def validate(self) -> None:
        super().validate()
        if self.assembleStaticSkyModel.doNImage:
            raise ConfigError("assembleStaticSkyModel.doNImage must be False (no PSF-matched nImage dataset exists)")
        if self.assembleStaticSkyModel.doWrite and self.warpType == self.assembleStaticSkyModel.warpType:
            raise ConfigError("assembleStaticSkyModel.doWrite with warpType == assembleStaticSkyModel.warpType: the two outputs would share a dataset name")

    def effective_max_epochs(self, n_mean: float) -> int:
        """LSST's broken-line temporal threshold for a candidate whose mean nImage is ``n_mean``."""
        return int(min(self.maxFractionEpochsLow * n_mean, self.maxNumEpochs + self.maxFractionEpochsHigh * n_mean))


# ====================================================================== ZOGY
class ZogyConfig(LsstConfig):
    """LSST ``ZogyConfig`` (ip_diffim, last version before its 2023 removal) plus diffstack
    options from the ZOGY paper that LSST did not implement (all off by default)."""

    _lsst_tasks = ("ZogyTask", "ZogyImagePsfMatchTask")

    _diffstack_only = (
        "paddingSeed", "doAstrometricNoise", "astrometricSigmaX", "astrometricSigmaY",
        "doSourceNoise", "doFitFluxRatio", "transientThreshold", "transientMinPixels",
        "transientMinProminence", "powerOfTwoCells", "noiseCorrelationFactor", "doMeasureNoiseCorrelation",
    )
    # diffstack names the scalings by role; LSST applied templateFluxScaling to exposure1 = science
    _pex_names = {"scienceFluxScaling": "templateFluxScaling", "templateFluxScaling": "scienceFluxScaling"}

    scienceFluxScaling = param.Number(1.0, bounds=(0, None), inclusive_bounds=(False, True), doc="Flux scaling F_n of the science image (used when scaleByCalibration is False).")
    templateFluxScaling = param.Number(1.0, bounds=(0, None), inclusive_bounds=(False, True), doc="Flux scaling F_r of the template image (used when scaleByCalibration is False).")
    scaleByCalibration = param.Boolean(True, doc="Calibrate both images to nJy with their photo_calib and set both scalings to 1.")
    correctBackground = param.Boolean(False, doc="Subtract each image's 3-sigma clipped mean before subtraction.")
    ignoreMaskPlanes = param.List(["INTRP", "EDGE", "DETECTED", "SAT", "CR", "BAD", "NO_DATA", "DETECTED_NEGATIVE"], item_type=str, doc="Pixels ignored by every statistic (variance means, background).")
    maxPsfCentroidDist = param.Number(0.2, bounds=(0, None), doc="Largest allowed distance (pixels) between the two PSF centroids.")
    doSpatialGrid = param.Boolean(False, doc="Solve ZOGY per grid cell with each cell's PSFs.")
    gridInnerSize = param.Number(8.0, bounds=(0, None), inclusive_bounds=(False, True), doc="Inner cell size in units of the matching-kernel size.")
    # ---- diffstack extras (not LSST fields)
    paddingSeed = param.Integer(0, doc="Seed of the white-noise padding (diffstack gives the two images independent noise, unlike LSST).")
    powerOfTwoCells = param.Boolean(False, doc="Pad cells to powers of two as LSST did (a 2048^2 image becomes a 4096^2 cell); by default cells are padded to the next FFT-friendly even size, with the same minimum border.")
    doAstrometricNoise = param.Boolean(False, doc="Add the paper's astrometric-noise terms to the Scorr denominator.")
    astrometricSigmaX = param.Number(0.0, bounds=(0, None), doc="Astrometric registration noise sigma_x (pixels).")
    astrometricSigmaY = param.Number(0.0, bounds=(0, None), doc="Astrometric registration noise sigma_y (pixels).")
    doSourceNoise = param.Boolean(False, doc="Add the paper's source-noise term to the Scorr denominator: each image's Poisson variance (calibration x image / GAIN) through the score kernels. For variance planes that hold the background only; LSST's planes already carry source noise (a warning says so if they do).")
    doFitFluxRatio = param.Boolean(False, doc="Fit F_n/F_r and the noise levels from the images instead of trusting the calibrations/scalings and variance planes: each variance plane is rescaled to its image's measured pixel variance, and F_n/F_r is the slope (with an intercept, outliers rejected) of N (*) P_r against R (*) P_n over bright pixels (F_r = 1).")
    noiseCorrelationFactor = param.Number(1.0, bounds=(0, None), inclusive_bounds=(False, True), doc="Multiply both variance planes by this factor (after calibration and any flux-ratio fit) before ZOGY: a resampled or drizzled image's noise is correlated, so its variance plane, right pixel by pixel, is too small on the PSF scale where S sums, and Scorr comes out too wide. 1 = off (LSST).")
    doMeasureNoiseCorrelation = param.Boolean(False, doc="Measure the noise-correlation factor from the pair itself (their difference in common flux units, away from sources and masked pixels; toolkit.real_data.noise_correlation_factor) and use it instead of noiseCorrelationFactor. It matters for registered (resampled) images; white noise measures ~1.")
    transientThreshold = param.Number(5.0, bounds=(0, None), inclusive_bounds=(False, True), doc="|Scorr| threshold of the transient catalog.")
    transientMinPixels = param.Integer(1, bounds=(1, None), doc="Minimum pixels above threshold for a catalog entry.")
    transientMinProminence = param.Number(2.0, bounds=(0, None), inclusive_bounds=(False, True), doc="A footprint's further |Scorr| peaks become catalog entries of their own when they rise this much above the saddle to a higher peak, so transients closer than their footprints are listed apart. A value above every |Scorr| (e.g. 1e9) gives one entry per footprint, as an LSST DiaSource catalog without deblending has.")

    def _pex_target(self, st: "PexStatement", where: str) -> str | None:
        # the standalone ZogyConfig's fields, or the old ImageDifferenceTask's spelling
        # config.subtract['zogy'].zogyConfig.<field> (and ZogyImagePsfMatchConfig's zogyConfig.<field>)
        t = st.target
        for prefix in ("subtract[zogy].zogyConfig.", "zogyConfig."):
            if t.startswith(prefix):
                return t[len(prefix):]
        if t == "subtract.name":
            if st.value != "zogy":
                raise ConfigError(f"{where}{_at(st)}config.subtract.name = {st.value!r}: diffstack implements only 'zogy'")
            return None
        if t.startswith("subtract[zogy].") or (t.startswith("subtract") and st.op == "retarget"):
            warn(f"{where}{_at(st)}config.{t} (ImagePsfMatch, not ZOGY) has no effect in diffstack; ignored")
            return None
        if t.startswith("subtract["):
            raise ConfigError(f"{where}{_at(st)}config.{t}: diffstack implements only the 'zogy' subtraction")
        return super()._pex_target(st, where)

    def _pex_header_notes(self) -> list[str]:
        return [
            "# LSST removed ZogyTask in 2023 (DM-38846); these are its last field names (standalone ZogyConfig).",
            "# In the old ImageDifferenceTask prefix each line with config.subtract['zogy'].zogyConfig instead of config.",
            "# Flux scalings: LSST applied templateFluxScaling to exposure1 (the science image); the values below",
            "# are swapped accordingly from diffstack's role names.",
        ]


#: LSST's own class names for the task configs (``lsst.drp.tasks.assemble_coadd``,
#: ``lsst.meas.algorithms``, ``lsst.pipe.tasks``), so code written against LSST's names reads
#: the same here
CompareWarpAssembleCoaddConfig = CompareWarpConfig
SourceDetectionConfig = DetectionConfig
ScaleVarianceImageConfig = ScaleVarianceConfig

CONFIG_CLASSES: dict[str, type[LsstConfig]] = {
    c.__name__: c
    for c in (AssembleCoaddConfig, CompareWarpConfig, ZogyConfig, DetectionConfig, ScaleVarianceConfig, InterpImageConfig, MaskStreaksConfig, CoaddPsfConfig)
}
# a document may name the class by LSST's name too
CONFIG_CLASSES.update(CompareWarpAssembleCoaddConfig=CompareWarpConfig, SourceDetectionConfig=DetectionConfig, ScaleVarianceImageConfig=ScaleVarianceConfig)


# ====================================================================== presets
def _lsst() -> CompareWarpConfig:
    return CompareWarpConfig()


def _dmtn080() -> CompareWarpConfig:
    """Defaults as of DMTN-080 (Aug 2018): 5-sigma detection, growth 2, template variance from scatter."""
    c = CompareWarpConfig()
    c.detect.param.update(thresholdValue=5.0, nSigmaToGrow=2.0)
    c.detectTemplate.param.update(thresholdValue=5.0, nSigmaToGrow=2.0)
    c.assembleStaticSkyModel.calcErrorFromInputVariance = False
    c.prefilterArtifactsMaskPlanes = ["NO_DATA", "BAD", "SAT", "SUSPECT"]
    return c


def _lsstcam_fl() -> CompareWarpConfig:
    """drp_pipe LSSTCam DRP-FL (first-look cadence) overrides."""
    c = CompareWarpConfig()
    c.maxFractionEpochsHigh = 0.2
    c.doPreserveContainedBySource = False
    return c


def _hsc() -> CompareWarpConfig:
    """Older obs_subaru HSC coadd overrides."""
    c = CompareWarpConfig()
    c.badMaskPlanes = ["BAD", "EDGE", "SAT", "NO_DATA"]
    c.doMaskBrightObjects = True
    c.doNImage = True
    c.subregionSize = (10000, 200)
    return c


def _decam() -> CompareWarpConfig:
    """drp_pipe DECam DRP overrides."""
    c = CompareWarpConfig()
    c.subregionSize = (10000, 200)
    c.doFilterMorphological = True
    c.interpImage.transpose = True
    c.coaddPsf.warpingKernelName = "lanczos5"
    c.removeMaskPlanes = c.removeMaskPlanes + ["CROSSTALK"]
    c.badMaskPlanes = c.badMaskPlanes + ["SUSPECT"]
    return c


PRESETS = {
    "lsst": (_lsst, "LSST current defaults (drp_tasks, 2026)"),
    "dmtn080": (_dmtn080, "DMTN-080 era defaults (2018)"),
    "lsstcam-fl": (_lsstcam_fl, "LSSTCam DRP-FL first-look overrides"),
    "hsc": (_hsc, "HSC (obs_subaru) production overrides"),
    "decam": (_decam, "DECam DRP production overrides"),
    "zogy": (ZogyConfig, "LSST ZogyConfig defaults (last version)"),
}


def as_config(config: Any, cls: type[LsstConfig], what: str = "config") -> LsstConfig:
    """``config`` as a ``cls``: a new default one for None, the object itself when it is one,
    or a new one with the fields of a mapping set (dotted names such as ``"detect.minPixels"``
    allowed).  Anything else is a :class:`ConfigError` naming what was given."""
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if isinstance(config, Mapping):
        cfg = cls()
        for key, value in config.items():
            if not isinstance(key, str):
                raise ConfigError(f"{what}: field names must be strings, got {key!r}")
            cfg.set_dotted(key, value)
        return cfg
    raise ConfigError(f"{what} must be a {cls.__name__} (or a mapping of its fields), got {type(config).__name__}")


def _config_text(p: Path, what: str = "config file") -> str:
    """The text of a config file, or a ConfigError that names it (not a UnicodeDecodeError)."""
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a directory")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {p} is not text (a .py override, YAML or JSON); is it a FITS or other binary file?") from None
    except OSError as exc:
        raise ConfigError(f"{what} {p} cannot be read: {exc.strerror or exc}") from None


def preset(name: str) -> LsstConfig:
    """A fresh config for preset ``name`` (see :data:`PRESETS`)."""
    try:
        return PRESETS[name][0]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


def load_pex_override(path: str | Path, cls: type[LsstConfig] = CompareWarpConfig, base: LsstConfig | None = None) -> LsstConfig:
    """Read a pipetask override file (never executed) into a config of class ``cls``."""
    cfg = cls() if base is None else base.copy()
    cfg.load(path)
    cfg.validate()
    return cfg


def config_from_file(path: str | Path, cls: type[LsstConfig], label: str | None = None) -> LsstConfig:
    """Load a ``.py`` override, a ``.yaml``/``.yml``/``.json`` export, or one task's config
    from an LSST pipeline YAML (``label``: its task label, needed when several tasks fit)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if p.suffix in (".yaml", ".yml"):
        return cls.from_yaml(_config_text(p), label=label, path=p)
    if p.suffix == ".json":
        return cls.from_json(_config_text(p))
    return load_pex_override(p, cls)
