"""Configs: LSST names/defaults, bounds, presets, pex export (checked with the real
lsst.pex.config loader), YAML round trip, and safe import of override files."""

import ast

import numpy as np
import pytest

from toolkit.config import (
    PRESETS, AssembleCoaddConfig, CompareWarpConfig, ConfigError, ZogyConfig, config_from_file, parse_pex_override, preset,
)

pex = pytest.importorskip("lsst.pex.config")


# ---- pex_config classes declared with LSST's field names, types and ranges -----------------------
class PexInterp(pex.Config):
    useFallbackValueAtEdge = pex.Field(dtype=bool, default=True, doc="d")
    fallbackValueType = pex.ChoiceField(dtype=str, default="MEDIAN", allowed={k: k for k in ("MEAN", "MEDIAN", "MEANCLIP", "USER")}, doc="d")
    fallbackUserValue = pex.Field(dtype=float, default=0.0, doc="d")
    negativeFallbackAllowed = pex.Field(dtype=bool, default=False, doc="d")
    transpose = pex.Field(dtype=bool, default=False, doc="d")


class PexCoaddPsf(pex.Config):
    warpingKernelName = pex.ChoiceField(dtype=str, default="lanczos3", allowed={k: k for k in ("bilinear", "lanczos2", "lanczos3", "lanczos4", "lanczos5")}, doc="d")
    cacheSize = pex.Field(dtype=int, default=0, doc="d")


class PexDetect(pex.Config):
    thresholdValue = pex.RangeField(dtype=float, default=5.0, min=0.0, doc="d")
    thresholdType = pex.ChoiceField(dtype=str, default="pixel_stdev", allowed={k: k for k in ("variance", "stdev", "value", "pixel_stdev")}, doc="d")
    thresholdPolarity = pex.ChoiceField(dtype=str, default="positive", allowed={k: k for k in ("positive", "negative", "both")}, doc="d")
    includeThresholdMultiplier = pex.RangeField(dtype=float, default=1.0, min=0.0, doc="d")
    minPixels = pex.RangeField(dtype=int, default=1, min=0, doc="d")
    nSigmaToGrow = pex.Field(dtype=float, default=2.4, doc="d")
    isotropicGrow = pex.Field(dtype=bool, default=True, doc="d")
    combinedGrow = pex.Field(dtype=bool, default=True, doc="d")
    returnOriginalFootprints = pex.Field(dtype=bool, default=False, doc="d")
    doTempLocalBackground = pex.Field(dtype=bool, default=True, doc="d")
    reEstimateBackground = pex.Field(dtype=bool, default=True, doc="d")
    nSigmaForKernel = pex.Field(dtype=float, default=7.0, doc="d")
    statsMask = pex.ListField(dtype=str, default=["BAD", "SAT", "EDGE", "NO_DATA"], doc="d")


class PexScaleVar(pex.Config):
    maskPlanes = pex.ListField(dtype=str, default=["DETECTED", "DETECTED_NEGATIVE", "BAD", "SAT", "NO_DATA", "INTRP"], doc="d")
    limit = pex.Field(dtype=float, default=10.0, doc="d")


class PexStreaks(pex.Config):
    absMinimumKernelHeight = pex.Field(dtype=float, default=5.0, doc="d")
    clusterMinimumSize = pex.Field(dtype=int, default=50, doc="d")
    nSigmaMask = pex.Field(dtype=float, default=5.0, doc="d")
    rhoBinSize = pex.Field(dtype=float, default=40.0, doc="d")
    thetaBinSize = pex.Field(dtype=float, default=2.0, doc="d")
    onlyMaskDetected = pex.Field(dtype=bool, default=True, doc="d")


class PexAssemble(pex.Config):
    coaddName = pex.Field(dtype=str, default="deep", doc="d")
    badMaskPlanes = pex.ListField(dtype=str, default=["NO_DATA", "BAD", "SAT", "EDGE"], doc="d")
    warpType = pex.ChoiceField(dtype=str, default="direct", allowed={"direct": "d", "psfMatched": "d"}, doc="d")
    subregionSize = pex.ListField(dtype=int, default=(2000, 2000), length=2, doc="d")
    statistic = pex.Field(dtype=str, default="MEANCLIP", doc="d")
    doOnlineForMean = pex.Field(dtype=bool, default=False, doc="d")
    sigmaClip = pex.Field(dtype=float, default=3.0, doc="d")
    clipIter = pex.Field(dtype=int, default=2, doc="d")
    calcErrorFromInputVariance = pex.Field(dtype=bool, default=True, doc="d")
    doInterp = pex.Field(dtype=bool, default=True, doc="d")
    interpImage = pex.ConfigField(dtype=PexInterp, doc="d")
    doWrite = pex.Field(dtype=bool, default=True, doc="d")
    doWriteArtifactMasks = pex.Field(dtype=bool, default=False, doc="d")
    doNImage = pex.Field(dtype=bool, default=False, doc="d")
    maskPropagationThresholds = pex.DictField(keytype=str, itemtype=float, default={"SAT": 0.1}, doc="d")
    removeMaskPlanes = pex.ListField(dtype=str, default=["NOT_DEBLENDED"], doc="d")
    doMaskBrightObjects = pex.Field(dtype=bool, default=False, doc="d")
    brightObjectMaskName = pex.Field(dtype=str, default="BRIGHT_OBJECT", doc="d")
    coaddPsf = pex.ConfigField(dtype=PexCoaddPsf, doc="d")
    doSelectVisits = pex.Field(dtype=bool, default=False, doc="d")
    doInputMap = pex.Field(dtype=bool, default=False, doc="d")
    doAttachTransmissionCurve = pex.Field(dtype=bool, default=False, doc="d")
    hasFakes = pex.Field(dtype=bool, default=False, doc="d")


class PexCompareWarp(PexAssemble):
    assembleStaticSkyModel = pex.ConfigField(dtype=PexAssemble, doc="d")
    detect = pex.ConfigField(dtype=PexDetect, doc="d")
    detectTemplate = pex.ConfigField(dtype=PexDetect, doc="d")
    detectTemplateIterMultiplier = pex.Field(dtype=float, default=1.25, doc="d")
    maxDetectTemplateIter = pex.Field(dtype=int, default=10, doc="d")
    maskStreaks = pex.ConfigField(dtype=PexStreaks, doc="d")
    streakMaskName = pex.Field(dtype=str, default="STREAK", doc="d")
    maxNumEpochs = pex.Field(dtype=int, default=2, doc="d")
    maxFractionEpochsLow = pex.RangeField(dtype=float, default=0.4, min=0.0, max=1.0, doc="d")
    maxFractionEpochsHigh = pex.RangeField(dtype=float, default=0.03, min=0.0, max=1.0, doc="d")
    spatialThreshold = pex.RangeField(dtype=float, default=0.5, min=0.0, max=1.0, inclusiveMin=True, inclusiveMax=True, doc="d")
    doScaleWarpVariance = pex.Field(dtype=bool, default=True, doc="d")
    scaleWarpVariance = pex.ConfigField(dtype=PexScaleVar, doc="d")
    doPreserveContainedBySource = pex.Field(dtype=bool, default=True, doc="d")
    doPrefilterArtifacts = pex.Field(dtype=bool, default=True, doc="d")
    prefilterArtifactsMaskPlanes = pex.ListField(dtype=str, default=("NO_DATA", "BAD", "SUSPECT"), doc="d")
    prefilterArtifactsRatio = pex.Field(dtype=float, default=0.05, doc="d")
    doFilterMorphological = pex.Field(dtype=bool, default=False, doc="d")
    growStreakFp = pex.Field(dtype=float, default=5, doc="d")

    def setDefaults(self):
        super().setDefaults()
        self.statistic = "MEAN"
        self.badMaskPlanes = ["NO_DATA", "BAD", "SAT"]
        self.removeMaskPlanes = ["NOT_DEBLENDED", "EDGE"]
        s = self.assembleStaticSkyModel
        s.badMaskPlanes = ["NO_DATA"]
        s.warpType = "psfMatched"
        s.statistic = "MEANCLIP"
        s.sigmaClip = 2.5
        s.clipIter = 3
        s.calcErrorFromInputVariance = True
        s.doWrite = False
        d = self.detect
        d.doTempLocalBackground = False
        d.reEstimateBackground = False
        d.returnOriginalFootprints = False
        d.thresholdPolarity = "both"
        d.thresholdValue = 7.5
        d.minPixels = 4
        d.nSigmaToGrow = 0.4
        t = self.detectTemplate
        t.nSigmaToGrow = 2.4
        t.thresholdValue = 300.0


class PexZogy(pex.Config):
    templateFluxScaling = pex.Field(dtype=float, default=1.0, doc="d")
    scienceFluxScaling = pex.Field(dtype=float, default=1.0, doc="d")
    scaleByCalibration = pex.Field(dtype=bool, default=True, doc="d")
    correctBackground = pex.Field(dtype=bool, default=False, doc="d")
    ignoreMaskPlanes = pex.ListField(dtype=str, default=("INTRP", "EDGE", "DETECTED", "SAT", "CR", "BAD", "NO_DATA", "DETECTED_NEGATIVE"), doc="d")
    maxPsfCentroidDist = pex.Field(dtype=float, default=0.2, doc="d")
    doSpatialGrid = pex.Field(dtype=bool, default=False, doc="d")
    gridInnerSize = pex.Field(dtype=float, default=8, doc="d")


def _pex_dict(cfg):
    out = {}
    for name, value in cfg.items():
        if isinstance(value, pex.Config):
            out.update({f"{name}.{k}": v for k, v in _pex_dict(value).items()})
        else:
            out[name] = list(value) if isinstance(value, (pex.listField.List, tuple, list)) else (dict(value) if hasattr(value, "keys") else value)
    return out


def _assert_matches_pex(cfg, pcfg):
    """Every LSST field of ``cfg`` equals the real lsst.pex.config ``pcfg``'s (sequences compared as lists)."""
    loaded = _pex_dict(pcfg)
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    for dotted, value in cfg.flat_items(pex=True):
        assert as_list(loaded[dotted]) == as_list(value), dotted


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("only_changed", [True, False])
def test_every_preset_exports_a_loadable_override(name, only_changed, tmp_path):
    cfg = preset(name)
    text = cfg.to_pex_override(label="assembleDeepCoadd", only_changed=only_changed, preset_name=name)
    ast.parse(text)  # (a)
    path = tmp_path / "override.py"
    path.write_text(text)
    pcfg = (PexZogy if isinstance(cfg, ZogyConfig) else PexCompareWarp)()
    pcfg.load(str(path))  # (b) the real loader
    pcfg.validate()
    # every LSST field we export has the same value in the loaded pex config
    _assert_matches_pex(cfg, pcfg)
    back = type(cfg).from_pex_override(text)  # (c)
    assert back == cfg


def test_single_change_is_one_line():
    base = CompareWarpConfig().to_pex_override()
    for dotted, value in [("spatialThreshold", 0.3), ("detect.thresholdValue", 6.0), ("assembleStaticSkyModel.sigmaClip", 2.0), ("maxNumEpochs", 3), ("badMaskPlanes", ["NO_DATA", "BAD"])]:
        cfg = CompareWarpConfig()
        cfg.set_dotted(dotted, value)
        lines = [l for l in cfg.to_pex_override().splitlines() if l.startswith("config.")]
        assert len(lines) == 1 and lines[0].startswith(f"config.{dotted} = ")
    assert not [l for l in base.splitlines() if l.startswith("config.")]


def test_out_of_range_and_wrong_type_refused():
    cfg = CompareWarpConfig()
    # an assignment param refuses is a ConfigError (a ValueError) naming the field and the rule
    with pytest.raises(ConfigError, match="spatialThreshold.*at most 1"):
        cfg.spatialThreshold = 1.5
    with pytest.raises(ConfigError, match="thresholdValue"):
        cfg.detect.thresholdValue = -1.0
    with pytest.raises(ConfigError, match="statistic"):
        cfg.statistic = "BOGUS"
    with pytest.raises(ConfigError, match="clipIter"):
        cfg.clipIter = "two"
    assert cfg.spatialThreshold == 0.5 and cfg.statistic == "MEAN"  # refused values leave no trace
    with pytest.raises(ConfigError, match="maxFractionEpochsLow"):
        CompareWarpConfig.from_pex_override("config.maxFractionEpochsLow = 3.0\n")
    with pytest.raises(ConfigError, match="unknown config field 'notAField'"):
        CompareWarpConfig.from_pex_override("config.notAField = 1\n")


def test_engines_take_a_config_a_mapping_or_none_and_name_anything_else():
    from toolkit.config import as_config
    from toolkit.sim import simulate_pair
    from toolkit.zogy import zogy

    cfg = as_config({"spatialThreshold": 0.3, "detect.minPixels": 6, "detectTemplate": {"thresholdValue": 200.0}}, CompareWarpConfig)
    assert (cfg.spatialThreshold, cfg.detect.minPixels, cfg.detectTemplate.thresholdValue) == (0.3, 6, 200.0)
    assert cfg.maxNumEpochs == CompareWarpConfig().maxNumEpochs
    same = ZogyConfig()
    assert as_config(same, ZogyConfig) is same and as_config(None, ZogyConfig) == ZogyConfig()
    with pytest.raises(ConfigError, match="unknown config field 'notAField'"):
        as_config({"notAField": 1}, ZogyConfig)
    with pytest.raises(ConfigError, match="at most 1"):
        as_config({"spatialThreshold": 2.0}, CompareWarpConfig)
    pair = simulate_pair(size=64, seed=3, n_transients=0)
    with pytest.raises(ConfigError, match="must be a ZogyConfig .* got list"):
        zogy(pair.science, pair.reference, config=[("doSpatialGrid", True)])
    with pytest.raises(ConfigError, match="must be a ZogyConfig .* got CompareWarpConfig"):
        zogy(pair.science, pair.reference, config=CompareWarpConfig())
    a = zogy(pair.science, pair.reference, config={"correctBackground": True})
    b = zogy(pair.science, pair.reference, config=ZogyConfig(correctBackground=True))
    c = zogy(pair.science, pair.reference)
    assert np.array_equal(a.diff.image, b.diff.image) and not np.array_equal(a.diff.image, c.diff.image)


def test_validate_rules_named():
    c = AssembleCoaddConfig(statistic="MAX")
    with pytest.raises(ConfigError, match="statistic"):
        c.validate()
    c = CompareWarpConfig()
    c.assembleStaticSkyModel.doNImage = True
    with pytest.raises(ConfigError, match="doNImage"):
        c.validate()
    with pytest.raises(ConfigError, match="doWriteArtifactMasks"):
        AssembleCoaddConfig(doWriteArtifactMasks=True).validate()


@pytest.mark.parametrize("payload", [
    "os.system('touch {s}')\n",
    "__import__('os').system('touch {s}')\n",
    "config.spatialThreshold = __import__('os').system('touch {s}')\n",
    "exec(\"open('{s}', 'w').write('x')\")\n",
    "config.spatialThreshold = float(open('{s}', 'w').write('x'))\n",
    "x = 1\n",
    "config.detect.thresholdValue = [i for i in range(3)]\n",
])
def test_malicious_override_refused_nothing_runs(payload, tmp_path):
    sentinel = tmp_path / "sentinel"
    with pytest.raises(ConfigError, match="line 1"):
        CompareWarpConfig.from_pex_override(payload.format(s=sentinel))
    assert not sentinel.exists()


def test_yaml_json_round_trip():
    for name in PRESETS:
        cfg = preset(name)
        assert type(cfg).from_yaml(cfg.to_yaml()) == cfg
        assert type(cfg).from_json(cfg.to_json()) == cfg


def test_zogy_scalings_swap_to_lsst_names():
    z = ZogyConfig(scienceFluxScaling=2.0, templateFluxScaling=3.0)
    text = z.to_pex_override()
    assert "config.templateFluxScaling = 2.0" in text and "config.scienceFluxScaling = 3.0" in text
    assert "paddingSeed" not in text
    assert ZogyConfig.from_pex_override(text) == z


def test_effective_max_epochs_table():
    c = CompareWarpConfig()
    got = [c.effective_max_epochs(n) for n in (1, 2, 3, 4, 5, 33, 34, 100, 300)]
    assert got == [0, 0, 1, 1, 2, 2, 3, 5, 11]


def test_parse_rejects_non_config_targets():
    assert parse_pex_override("'''doc'''\nconfig.a.b = 1\n") == [(2, "a.b", 1, "set")]
    with pytest.raises(ConfigError, match="line 2"):
        parse_pex_override("config.a = 1\nconfig.a[0] = 2\n")


# ---- reading the override files and pipelines LSST users already have ------------------------------
def test_imports_are_read_not_run(tmp_path):
    """An import is skipped (nothing is executed); a call on the imported name is refused on
    its own line."""
    sentinel = tmp_path / "sentinel"
    with pytest.raises(ConfigError, match="line 2"):
        CompareWarpConfig.from_pex_override(f"import os\nos.system('touch {sentinel}')\n")
    assert not sentinel.exists()


def _obs_style_files(tmp_path):
    # an obs_* package's config/assembleCoadd.py with DECam's production overrides (reference
    # section 1.6), loading a sibling file by LSST's __file__ idiom
    (tmp_path / "coaddBase.py").write_text("config.coaddPsf.warpingKernelName = 'lanczos5'\nconfig.badMaskPlanes.remove('SAT')\n")
    main = tmp_path / "assembleCoadd.py"
    main.write_text(
        "import os.path\n"
        "from lsst.pipe.tasks.coaddBase import CoaddBaseTask\n"
        "config.load(os.path.join(os.path.dirname(__file__), 'coaddBase.py'))\n"
        "config.subregionSize = (10000, 200)\n"
        "config.doFilterMorphological = True\n"
        "config.removeMaskPlanes.append('CROSSTALK')\n"
        "config.badMaskPlanes += ['SUSPECT']\n"
        "config.prefilterArtifactsMaskPlanes.extend(['SAT'])\n"
        "config.interpImage.transpose = True\n"
        "config.assembleStaticSkyModel.badMaskPlanes.append('BAD')\n"
    )
    return main


def test_obs_package_style_override_matches_the_real_pex_loader(tmp_path, monkeypatch):
    """The same file read by lsst.pex.config (which executes it) and by diffstack (which only
    parses it) gives the same value for every LSST field."""
    main = _obs_style_files(tmp_path)
    cfg = config_from_file(main, CompareWarpConfig)
    assert cfg.badMaskPlanes == ["NO_DATA", "BAD", "SUSPECT"]  # SAT removed by the loaded file, SUSPECT added after
    assert cfg.removeMaskPlanes == ["NOT_DEBLENDED", "EDGE", "CROSSTALK"]
    assert cfg.subregionSize == (10000, 200) and cfg.doFilterMorphological and cfg.interpImage.transpose
    pcfg = PexCompareWarp()
    # pex executes the file: give it an importable stand-in for the lsst.pipe.tasks import
    import sys
    import types

    for name in ("lsst.pipe", "lsst.pipe.tasks", "lsst.pipe.tasks.coaddBase"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["lsst.pipe.tasks.coaddBase"].CoaddBaseTask = object
    pcfg.load(str(main))
    _assert_matches_pex(cfg, pcfg)
    # and the CLI's loader reads the same file to the same config
    from toolkit.cli_engine import load_config

    assert load_config(str(main), CompareWarpConfig) == cfg


def test_config_load_from_get_package_dir_matches_the_real_pex_loader(tmp_path, monkeypatch):
    """obs_subaru's style, ``config.load(os.path.join(getPackageDir("obs_x"), "config", ...))``,
    resolves through EUPS's ``OBS_X_DIR`` as ``lsst.utils.getPackageDir`` does; without the
    variable the error names it and the file."""
    pkg = tmp_path / "obs_fake"
    (pkg / "config" / "hsc").mkdir(parents=True)
    (pkg / "config" / "hsc" / "assembleCoadd.py").write_text("config.badMaskPlanes = ('BAD', 'EDGE', 'SAT', 'INTRP', 'NO_DATA',)\nconfig.doNImage = True\n")
    main = tmp_path / "hscAssemble.py"
    main.write_text(
        "import os.path\n"
        "from lsst.utils import getPackageDir\n"
        "config.load(os.path.join(getPackageDir('obs_fake'), 'config', 'hsc', 'assembleCoadd.py'))\n"
        "config.maxNumEpochs = 3\n"
    )
    monkeypatch.delenv("OBS_FAKE_DIR", raising=False)
    with pytest.raises(ConfigError, match=r"hscAssemble.py, line 3: .*\$OBS_FAKE_DIR"):
        config_from_file(main, CompareWarpConfig)
    monkeypatch.setenv("OBS_FAKE_DIR", str(pkg))
    cfg = config_from_file(main, CompareWarpConfig)
    assert cfg.badMaskPlanes == ["BAD", "EDGE", "SAT", "INTRP", "NO_DATA"] and cfg.doNImage and cfg.maxNumEpochs == 3
    pcfg = PexCompareWarp()
    pcfg.load(str(main))  # executes the file: the real lsst.utils.getPackageDir reads the variable
    _assert_matches_pex(cfg, pcfg)


def test_sub_config_load_matches_the_real_pex_loader(tmp_path):
    """``config.assembleStaticSkyModel.load(path)`` applies a file to that sub-config: inside
    it, ``config`` is the sub-config, also for the files it loads in turn."""
    (tmp_path / "base.py").write_text("config.badMaskPlanes = ('BAD', 'EDGE', 'NO_DATA', )\nconfig.sigmaClip = 2.0\n")
    (tmp_path / "static.py").write_text(
        "import os.path\n"
        "config.load(os.path.join(os.path.dirname(__file__), 'base.py'))\n"
        "config.clipIter = 4\n"
    )
    main = tmp_path / "cw.py"
    main.write_text(
        "import os.path\n"
        "config.assembleStaticSkyModel.load(os.path.join(os.path.dirname(__file__), 'static.py'))\n"
        "config.load(os.path.join(os.path.dirname(__file__), 'base.py'))\n"
        "config.maxNumEpochs = 3\n"
    )
    cfg = config_from_file(main, CompareWarpConfig)
    sky = cfg.assembleStaticSkyModel
    assert sky.badMaskPlanes == ["BAD", "EDGE", "NO_DATA"] and sky.sigmaClip == 2.0 and sky.clipIter == 4
    assert cfg.badMaskPlanes == ["BAD", "EDGE", "NO_DATA"] and cfg.sigmaClip == 2.0 and cfg.clipIter == CompareWarpConfig().clipIter
    assert cfg.maxNumEpochs == 3
    pcfg = PexCompareWarp()
    pcfg.load(str(main))
    _assert_matches_pex(cfg, pcfg)
    # a field the sub-config lacks is named with its full path, and the file it is in
    (tmp_path / "bad.py").write_text("config.doMatchBackgrounds = False\n")
    main.write_text("config.assembleStaticSkyModel.load('bad.py')\n")
    with pytest.raises(ConfigError, match=r"bad.py, line 1: unknown config field 'assembleStaticSkyModel.doMatchBackgrounds'"):
        config_from_file(main, CompareWarpConfig)


def test_root_spelling_of_old_obs_files_is_refused_as_pex_config_refuses_it(tmp_path):
    """Old obs_* files wrote ``root.<field>``; current pex_config runs a file with only
    ``config`` bound, so pipetask fails on them, and diffstack says why instead of accepting
    a file production would reject."""
    old = tmp_path / "assembleCoadd.py"
    old.write_text("root.badMaskPlanes = ('BAD', 'EDGE', 'SAT', 'INTRP', )\n")
    with pytest.raises(NameError, match="root"):
        PexCompareWarp().load(str(old))
    with pytest.raises(ConfigError, match=r"assembleCoadd.py, .*'root'.*write config.<field>"):
        config_from_file(old, CompareWarpConfig)


def test_inert_fields_warn_away_from_their_default():
    """Fields kept for LSST's sake that change nothing here (no profile fit, no background
    retry loop) are set as read, silently at their defaults, with a warning at other values."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = CompareWarpConfig.from_pex_override("config.maskStreaks.nSigmaMask=5.0\nconfig.maxDetectTemplateIter=10\n")
    with pytest.warns(UserWarning, match=r"line 1: config.maskStreaks.nSigmaMask = 3.0 is kept but changes nothing here\. .*no profile fit"):
        cfg = CompareWarpConfig.from_pex_override("config.maskStreaks.nSigmaMask=3.0\nconfig.spatialThreshold=0.4\n")
    assert cfg.maskStreaks.nSigmaMask == 3.0 and cfg.spatialThreshold == 0.4
    with pytest.warns(UserWarning, match=r"config.detectTemplateIterMultiplier = 1.5 is kept but changes nothing here\. .*never retries"):
        CompareWarpConfig.from_pex_override("config.detectTemplateIterMultiplier=1.5\n")


def test_warnings_name_the_callers_line(tmp_path):
    """diffstack's warnings are attributed to the first line outside diffstack, however deep
    the check sits: here the caller's; in a thread of the standard library's (no caller's line
    above), diffstack's own outermost line; and the CLI prints each as one line."""
    import subprocess
    import sys
    import threading

    from toolkit import config as config_module

    text = "config.doScaleZeroPoint = False\n"
    with pytest.warns(UserWarning, match="doScaleZeroPoint has no effect") as rec:
        CompareWarpConfig.from_pex_override(text)
    assert [r.filename for r in rec] == [__file__]
    with pytest.warns(UserWarning, match="doScaleZeroPoint has no effect") as rec:
        t = threading.Thread(target=CompareWarpConfig.from_pex_override, args=(text,))
        t.start()
        t.join()
    assert [r.filename for r in rec] == [config_module.__file__]
    override = tmp_path / "o.py"
    override.write_text(text)
    run = subprocess.run([sys.executable, "-m", "toolkit.cli", "config", "show", str(override)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == ["diffstack config: warning: o.py, line 1: LSST field config.doScaleZeroPoint has no effect in diffstack; ignored"]


def test_deprecated_lsst_fields_warn():
    with pytest.warns(UserWarning, match="doScaleZeroPoint has no effect"):
        cfg = CompareWarpConfig.from_pex_override("config.doScaleZeroPoint = False\nconfig.maxNumEpochs = 3\n")
    assert cfg.maxNumEpochs == 3
    with pytest.warns(UserWarning, match="select has no effect"):
        CompareWarpConfig.from_pex_override("config.select.retarget(PsfWcsSelectImagesTask)\n")


@pytest.mark.parametrize("text, match", [
    ("config.spatialThreshold.append(1)\n", "not a list field"),
    ("config.badMaskPlanes.remove('CR')\n", "'CR' is not in"),
    ("config.badMaskPlanes += 'SUSPECT'\n", "extend/\\+= needs a list"),
    ("config.badMaskPlanes.sort()\n", "line 1: config.badMaskPlanes.sort"),
    ("config.detect.retarget(MyTask)\n", "line 1: config.detect.retarget"),
    ("config.load(getPackageDir('obs_decam'))\n", "config.load path must be"),
    ("config.load('missing.py')\n", "no such file"),
    ("config.a['x'].b = 1\n", "unknown config group"),
    ("config.badMaskPlanes.append(['A'] * 3)\n", "line 1: argument is not a literal"),
])
def test_override_statements_refused_with_named_errors(text, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=match):
        CompareWarpConfig.from_pex_override(text)


def test_config_load_cycle_refused(tmp_path):
    (tmp_path / "a.py").write_text("config.load('b.py')\n")
    (tmp_path / "b.py").write_text("config.load('a.py')\n")
    with pytest.raises(ConfigError, match="cycle"):
        config_from_file(tmp_path / "a.py", CompareWarpConfig)


def test_zogy_old_image_difference_spelling():
    """ImageDifferenceTask's override put ZogyConfig under config.subtract['zogy'].zogyConfig
    (reference section 1.7); the flux scalings keep LSST's swapped meaning there too."""
    text = (
        "config.subtract.name = 'zogy'\n"
        "config.subtract['zogy'].zogyConfig.doSpatialGrid = True\n"
        "config.subtract['zogy'].zogyConfig.templateFluxScaling = 2.0\n"
        "config.subtract['zogy'].kernel.name = 'AL'\n"
    )
    with pytest.warns(UserWarning, match="ImagePsfMatch, not ZOGY"):
        z = ZogyConfig.from_pex_override(text)
    assert z.doSpatialGrid and z.scienceFluxScaling == 2.0 and z.templateFluxScaling == 1.0
    assert ZogyConfig.from_pex_override("config.zogyConfig.gridInnerSize = 6.0\n").gridInnerSize == 6.0
    with pytest.raises(ConfigError, match="only 'zogy'"):
        ZogyConfig.from_pex_override("config.subtract.name = 'al'\n")
    with pytest.raises(ConfigError, match="only the 'zogy' subtraction"):
        ZogyConfig.from_pex_override("config.subtract['al'].kernel.name = 'AL'\n")


_PIPELINE = """
description: two CompareWarp coadds, as in drp_pipe
parameters:
  flHigh: 0.2
tasks:
  makeDirectWarp: lsst.drp.tasks.make_direct_warp.MakeDirectWarpTask
  assembleDeepCoadd:
    class: lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddTask
    config:
      - doSelectVisits: true
        assembleStaticSkyModel.doSelectVisits: true
        doWriteArtifactMasks: true
        doOnlineForMean: true
        maxFractionEpochsHigh: parameters.flHigh
        connections.outputCoaddName: deep
      - python: |
          config.badMaskPlanes.append("SUSPECT")
          config.assembleStaticSkyModel.sigmaClip = 2.0
  assembleTemplateCoadd:
    class: lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddTask
    config:
      doNImage: true
"""


def test_pipeline_yaml_task_config(tmp_path):
    p = tmp_path / "DRP.yaml"
    p.write_text(_PIPELINE)
    with pytest.raises(ConfigError, match="several CompareWarpAssembleCoaddTask tasks .*name the task label"):
        config_from_file(p, CompareWarpConfig)
    with pytest.warns(UserWarning, match="connections.outputCoaddName has no effect"):
        cfg = config_from_file(p, CompareWarpConfig, label="assembleDeepCoadd")
    assert cfg.doSelectVisits and cfg.assembleStaticSkyModel.doSelectVisits and cfg.doWriteArtifactMasks
    assert cfg.doOnlineForMean and cfg.maxFractionEpochsHigh == 0.2
    assert cfg.badMaskPlanes == ["NO_DATA", "BAD", "SAT", "SUSPECT"] and cfg.assembleStaticSkyModel.sigmaClip == 2.0
    from toolkit.cli_engine import load_config

    assert load_config(f"{p}#assembleTemplateCoadd", CompareWarpConfig).doNImage
    with pytest.raises(ConfigError, match="no task labelled 'nope'"):
        config_from_file(p, CompareWarpConfig, label="nope")
    with pytest.raises(ConfigError, match="no ZogyTask / ZogyImagePsfMatchTask task"):
        config_from_file(p, ZogyConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text(_PIPELINE.replace("parameters.flHigh", "parameters.missing"))
    with pytest.raises(ConfigError, match="parameter 'missing' is not defined"):
        config_from_file(bad, CompareWarpConfig, label="assembleDeepCoadd")
    bad.write_text(_PIPELINE.replace("doNImage: true", "doNImage: [1, 2"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_from_file(bad, CompareWarpConfig)


def test_lsst_class_names_are_aliases_and_name_documents():
    """LSST's config class names import from toolkit.config and may name a document's class,
    also as LSST's dotted path."""
    import json

    from toolkit.config import CompareWarpAssembleCoaddConfig, LsstConfig, ScaleVarianceImageConfig, SourceDetectionConfig

    assert CompareWarpAssembleCoaddConfig is CompareWarpConfig
    assert SourceDetectionConfig().thresholdValue == 5.0 and ScaleVarianceImageConfig().limit == 10.0
    doc = json.loads(CompareWarpConfig(maxNumEpochs=3).to_json())
    for name in ("CompareWarpAssembleCoaddConfig", "lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddConfig"):
        doc["class"] = name
        cfg = LsstConfig.from_json(json.dumps(doc))
        assert isinstance(cfg, CompareWarpConfig) and cfg.maxNumEpochs == 3
    doc["class"] = "lsst.drp.tasks.assemble_coadd.NoSuchConfig"
    with pytest.raises(ConfigError, match="unknown config class"):
        LsstConfig.from_json(json.dumps(doc))


_INGREDIENT = """\
description: coaddition ingredients
parameters:
  spatial: 0.3
tasks:
  makeWarp: lsst.drp.tasks.make_direct_warp.MakeDirectWarpTask
  assembleCoadd:
    class: lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddTask
    config:
      maxNumEpochs: 3
      python: config.detect.thresholdValue = 6.0
  assembleTemplate:
    class: lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddTask
subsets:
  templates:
    subset: [assembleTemplate]
"""


def test_pipeline_imports_merge_as_pipetask_merges_them(tmp_path, monkeypatch):
    """A pipeline that imports its tasks (drp_pipe's layout: $DRP_PIPE_DIR/pipelines/_ingredients):
    imported config blocks come first, the document's blocks for the same label and class after
    them; include/exclude (labels or labeled subsets) and rename filter an import; parameters
    come from either; within a block pipetask applies the python code before the keys."""
    root = tmp_path / "fake_pipe"
    (root / "_ingredients").mkdir(parents=True)
    (root / "_ingredients" / "coadd.yaml").write_text(_INGREDIENT)
    top = tmp_path / "DRP.yaml"

    def write(imports, tasks=""):
        top.write_text(f"description: top\nimports:\n{imports}\n" + (f"tasks:\n{tasks}" if tasks else ""))

    own = (
        "  assembleCoadd:\n    class: lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddTask\n"
        "    config:\n      spatialThreshold: parameters.spatial\n      maxNumEpochs: 4\n      python: config.maxNumEpochs = 5\n"
    )
    write("  - location: $FAKE_PIPE_DIR/_ingredients/coadd.yaml\n    exclude: templates", own)
    monkeypatch.delenv("FAKE_PIPE_DIR", raising=False)
    with pytest.raises(ConfigError, match=r"\$FAKE_PIPE_DIR.*environment variable not set"):
        config_from_file(top, CompareWarpConfig)
    monkeypatch.setenv("FAKE_PIPE_DIR", str(root))
    cfg = config_from_file(top, CompareWarpConfig)  # one CompareWarp task left: found without a label
    assert cfg.maxNumEpochs == 4 and cfg.detect.thresholdValue == 6.0 and cfg.spatialThreshold == 0.3
    # without the exclusion two tasks fit; include by label picks one
    write("  - $FAKE_PIPE_DIR/_ingredients/coadd.yaml")
    with pytest.raises(ConfigError, match="several CompareWarpAssembleCoaddTask tasks"):
        config_from_file(top, CompareWarpConfig)
    write("  - location: $FAKE_PIPE_DIR/_ingredients/coadd.yaml\n    include: [assembleCoadd]")
    assert config_from_file(top, CompareWarpConfig).maxNumEpochs == 3
    write("  - location: $FAKE_PIPE_DIR/_ingredients/coadd.yaml\n    include: []")  # pipe_base keeps nothing
    with pytest.raises(ConfigError, match="no CompareWarpAssembleCoaddTask task"):
        config_from_file(top, CompareWarpConfig)
    write("  - location: $FAKE_PIPE_DIR/_ingredients/coadd.yaml\n    include: [assembleCoadd]\n    rename: {assembleCoadd: assembleDeepCoadd}")
    assert config_from_file(top, CompareWarpConfig, label="assembleDeepCoadd").detect.thresholdValue == 6.0
    # the same label with another class replaces the imported task, its config blocks with it
    write("  - location: $FAKE_PIPE_DIR/_ingredients/coadd.yaml\n    include: assembleCoadd",
          "  assembleCoadd:\n    class: my.own.CompareWarpAssembleCoaddTask\n    config:\n      maxNumEpochs: 7\n")
    cfg = config_from_file(top, CompareWarpConfig)
    assert cfg.maxNumEpochs == 7 and cfg.detect.thresholdValue == CompareWarpConfig().detect.thresholdValue
    # what pipetask refuses is refused, with the reason
    write("  - location: $FAKE_PIPE_DIR/_ingredients/coadd.yaml\n    include: [assembleCoadd]\n    exclude: [makeWarp]")
    with pytest.raises(ConfigError, match="both 'include' and 'exclude'"):
        config_from_file(top, CompareWarpConfig)
    write("  - $FAKE_PIPE_DIR/_ingredients/coadd.yaml\n  - $FAKE_PIPE_DIR/_ingredients/coadd.yaml")
    with pytest.raises(ConfigError, match="imported more than once: assembleCoadd, assembleTemplate, makeWarp"):
        config_from_file(top, CompareWarpConfig)
    top.write_text("description: top\ninherits: $FAKE_PIPE_DIR/_ingredients/coadd.yaml\n")
    with pytest.raises(ConfigError, match="'inherits' key is not supported"):
        config_from_file(top, CompareWarpConfig)
    write("  - location: $FAKE_PIPE_DIR/_ingredients/nothere.yaml")
    with pytest.raises(ConfigError, match="no such file .*nothere.yaml"):
        config_from_file(top, CompareWarpConfig)


def test_pipeline_file_entries_are_read_from_the_working_directory(tmp_path, monkeypatch):
    """pipetask resolves a pipeline's relative ``file:`` (and a python block's config.load) from
    the working directory, not from the pipeline's folder; so does diffstack."""
    (tmp_path / "pipes").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "cw.py").write_text("config.maxNumEpochs = 6\n")
    pipe = tmp_path / "pipes" / "p.yaml"
    pipe.write_text(
        "description: d\ntasks:\n  a:\n    class: lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddTask\n"
        "    config:\n      file: configs/cw.py\n"
    )
    monkeypatch.chdir(tmp_path)
    assert config_from_file(pipe, CompareWarpConfig).maxNumEpochs == 6
    monkeypatch.chdir(tmp_path / "pipes")
    with pytest.raises(ConfigError, match="no such file"):
        config_from_file(pipe, CompareWarpConfig)


def test_pipeline_string_values_are_read_as_pipetask_reads_them(tmp_path):
    """pipetask parses a pipeline key's string value (and a list's string items) as a literal
    expression whose bare names are strings: "3" is 3, "[NO_DATA, BAD]" a list."""
    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        "description: d\ntasks:\n  a:\n    class: lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddTask\n"
        "    config:\n      maxNumEpochs: '3'\n      badMaskPlanes: '[NO_DATA, BAD]'\n      detect.thresholdValue: 6\n"
        "      assembleStaticSkyModel.subregionSize: '(10000, 200)'\n      statistic: MEAN\n"
    )
    cfg = config_from_file(pipe, CompareWarpConfig)
    assert cfg.maxNumEpochs == 3 and cfg.badMaskPlanes == ["NO_DATA", "BAD"] and cfg.statistic == "MEAN"
    assert cfg.detect.thresholdValue == 6.0 and cfg.assembleStaticSkyModel.subregionSize == (10000, 200)


def test_pex_config_api_methods_match_the_real_pex_config(tmp_path):
    """load / loadFromString / loadFromStream (in place, with root=), save / saveToString /
    saveToStream, toDict, names, keys, items and compare, used as on an lsst.pex.config object,
    give what the real pex_config gives."""
    import io

    text = "config.maxNumEpochs = 3\nconfig.detect.thresholdValue = 6.0\nconfig.badMaskPlanes.append('EDGE')\n"
    ours, real = CompareWarpConfig(), PexCompareWarp()
    ours.loadFromString(text)
    real.loadFromString(text)
    _assert_matches_pex(ours, real)
    old = tmp_path / "old.py"
    old.write_text("root.spatialThreshold = 0.25\nroot.assembleStaticSkyModel.sigmaClip = 2.0\n")
    ours.load(old, root="root")
    real.load(str(old), root="root")
    _assert_matches_pex(ours, real)
    ours.loadFromStream(io.StringIO("config.maxFractionEpochsHigh = 0.1\n"))
    real.loadFromStream(io.StringIO("config.maxFractionEpochsHigh = 0.1\n"))
    _assert_matches_pex(ours, real)
    assert ours.maxNumEpochs == 3 and ours.spatialThreshold == 0.25 and ours.maxFractionEpochsHigh == 0.1
    # written by us, read back by the real loader and by us, with either root name
    for root in ("config", "root"):
        path = tmp_path / f"saved_{root}.py"
        ours.save(path, root=root)
        fresh_real, fresh_ours = PexCompareWarp(), CompareWarpConfig()
        fresh_real.load(str(path), root=root)
        fresh_ours.load(path, root=root)
        _assert_matches_pex(ours, fresh_real)
        assert fresh_ours == ours and fresh_ours.compare(ours)
    buf = io.StringIO()
    ours.saveToStream(buf)
    assert buf.getvalue() == ours.saveToString()
    # inspection: LSST names, sub-configs as dicts
    d = ours.toDict()
    assert d["maxNumEpochs"] == 3 and d["detect"]["thresholdValue"] == 6.0 and isinstance(d["assembleStaticSkyModel"], dict)
    real_names = set(_pex_dict(real))
    assert real_names <= set(ours.names()) and "detect.thresholdValue" in ours.names()
    assert set(real.keys()) <= set(ours.keys()) and dict(ours.items())["maxNumEpochs"] == 3
    # compare: tolerances and the report of each difference
    other = ours.copy()
    other.spatialThreshold = 0.25 + 1e-12
    assert ours.compare(other)
    other.spatialThreshold, other.maxNumEpochs = 0.3, 4
    said = []
    assert not ours.compare(other, shortcut=False, output=said.append)
    assert len(said) == 2 and any("spatialThreshold" in s for s in said)
    # what cannot be parsed, or extra variables for executed code, are refused by name
    with pytest.raises(ConfigError, match="extraLocals"):
        ours.loadFromString("config.maxNumEpochs = x\n", extraLocals={"x": 3})
    with pytest.raises(ConfigError, match="line 1: value of config.maxNumEpochs is not a literal"):
        ours.loadFromString("config.maxNumEpochs = 1 + 2\n")
    with pytest.raises(ConfigError, match="config file not found"):
        ours.load(tmp_path / "missing.py")


def test_pipeline_instrument_overrides_come_first_as_in_pipetask(tmp_path, monkeypatch):
    """pipetask applies the instrument's obs-package overrides for the task (config/<name>.py,
    then config/<policy>/<name>.py) before the pipeline's own blocks; without the package a
    warning says what is not applied."""
    obs = tmp_path / "obs_lsst"
    (obs / "config" / "lsstCam").mkdir(parents=True)
    (obs / "config" / "assembleCoadd.py").write_text("config.subregionSize = (10000, 200)\n")
    (obs / "config" / "compareWarpAssembleCoadd.py").write_text(
        "import os.path\nconfig.load(os.path.join(os.path.dirname(__file__), 'assembleCoadd.py'))\n"
        "config.maxFractionEpochsHigh = 0.2\nconfig.maxNumEpochs = 5\n"
    )
    (obs / "config" / "lsstCam" / "compareWarpAssembleCoadd.py").write_text("config.prefilterArtifactsMaskPlanes.append('SPIKE')\nconfig.spatialThreshold = 0.4\n")
    pipe = tmp_path / "DRP.yaml"
    pipe.write_text(
        "description: d\ninstrument: lsst.obs.lsst.LsstCam\ntasks:\n  assembleDeepCoadd:\n"
        "    class: lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddTask\n    config:\n      maxNumEpochs: 3\n"
    )
    monkeypatch.delenv("OBS_LSST_DIR", raising=False)
    with pytest.warns(UserWarning, match=r"obs_lsst's config overrides compareWarpAssembleCoadd.py and lsstCam/compareWarpAssembleCoadd.py; set \$OBS_LSST_DIR"):
        cfg = config_from_file(pipe, CompareWarpConfig)
    assert cfg.maxNumEpochs == 3 and cfg.maxFractionEpochsHigh == CompareWarpConfig().maxFractionEpochsHigh
    monkeypatch.setenv("OBS_LSST_DIR", str(obs))
    cfg = config_from_file(pipe, CompareWarpConfig)
    assert cfg.maxNumEpochs == 3  # the pipeline's value, applied after the instrument's 5
    assert cfg.maxFractionEpochsHigh == 0.2 and cfg.spatialThreshold == 0.4 and cfg.subregionSize == (10000, 200)
    assert cfg.prefilterArtifactsMaskPlanes == list(CompareWarpConfig().prefilterArtifactsMaskPlanes) + ["SPIKE"]
    # obs_lsst's current layout keeps the folder with its Python code (resource://lsst.obs.lsst/resources/config)
    moved = tmp_path / "obs_lsst_new"
    (moved / "python" / "lsst" / "obs" / "lsst" / "resources").mkdir(parents=True)
    (obs / "config").rename(moved / "python" / "lsst" / "obs" / "lsst" / "resources" / "config")
    monkeypatch.setenv("OBS_LSST_DIR", str(moved))
    assert config_from_file(pipe, CompareWarpConfig) == cfg
    # the instrument may come from an import; a second, different one is refused
    child = tmp_path / "child.yaml"
    child.write_text(f"description: c\nimports:\n  - {pipe}\n")
    assert config_from_file(child, CompareWarpConfig).maxFractionEpochsHigh == 0.2
    child.write_text(f"description: c\ninstrument: lsst.obs.subaru.HyperSuprimeCam\nimports:\n  - {pipe}\n")
    with pytest.raises(ConfigError, match="only one instrument"):
        config_from_file(child, CompareWarpConfig)


@pytest.mark.parametrize("text, match", [
    ("imports: 5\n", "an imports entry must be a location"),
    ("imports:\n  - {include: [x]}\n", "an imports entry must be a location"),
    ("imports:\n  - {location: other.yaml, rename: [1, 2]}\n", "'rename' must map labels"),
    ("imports:\n  - {location: other.yaml, include: 5}\n", "'include' must be a label or a list"),
    ("subsets: 7\ntasks:\n  x: a.B\n", "'subsets' must be a mapping"),
    ("tasks: [a, b]\n", "'tasks' must be a mapping"),
    ("tasks:\n  x:\n    config: {maxNumEpochs: 3}\n", "task 'x' has no 'class'"),
    ("instrument: [a, b]\ntasks:\n  x: a.B\n", "only one top-level instrument"),
])
def test_malformed_pipelines_get_named_errors(text, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other.yaml").write_text("description: o\ntasks:\n  y: lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddTask\n")
    (tmp_path / "p.yaml").write_text("description: p\n" + text)
    with pytest.raises(ConfigError, match=match):
        config_from_file(tmp_path / "p.yaml", CompareWarpConfig)


_SAVED = '''import lsst.drp.tasks.assemble_coadd
assert type(config) is lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddConfig, f"config is of type {type(config).__module__}.{type(config).__name__} instead of lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddConfig"

import lsst.meas.algorithms.detection
# Flag to enable/disable saving of log output for a task, enabled by default.
config.saveLogOutput=True
config.select.maxEllipResidual=0.007
config.select.minNPsfStarPerBand={'u': 6.0, 'g': 15.0, 'fallback': 6.0}
config.badMaskPlanes=['NO_DATA', 'BAD', 'SAT', 'SUSPECT']
config.subregionSize=[10000, 100]
config.interpImage.modelPsf.size=None
config.interpImage.transpose=0
config.connections.inputWarps='direct_warp'
config.assembleStaticSkyModel.saveLogOutput=True
config.assembleStaticSkyModel.calcErrorFromInputVariance=False
config.assembleStaticSkyModel.interpImage.transpose=1
config.detect.thresholdValue=5.0
config.detect.adjustBackground=0.0
config.detect.background.binSize=128
config.detect.doTempWideBackground=False
config.detect.nPeaksMaxSimple=1
config.detect.statsMask=['BAD', 'SAT', 'EDGE', 'NO_DATA']
config.detect.excludeMaskPlanes=[]
config.detectTemplate.thresholdValue=50.0
config.maskStreaks.invSigma=0.1
config.scaleWarpVariance.background.binSize=32
config.maxNumEpochs=3
'''


def test_a_saved_pex_config_dump_loads(tmp_path):
    """What Config.save / pipetask --save-config writes: imports, the class assert, and every
    LSST field, including many diffstack does not model.  Fields with no effect here are named
    in one warning; a non-default value of one diffstack does not implement gets its own; a dump
    of another class is refused as pex_config's assert refuses it."""
    import warnings

    p = tmp_path / "compareWarp_config.py"
    p.write_text(_SAVED)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = config_from_file(p, CompareWarpConfig)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "10 LSST fields with no effect in diffstack ignored" in msgs[0], msgs
    assert "config.select.*" in msgs[0] and "config.detect.background.*" in msgs[0] and "config.maskStreaks.invSigma" in msgs[0]
    assert cfg.badMaskPlanes == ["NO_DATA", "BAD", "SAT", "SUSPECT"] and cfg.subregionSize == (10000, 100)
    assert cfg.interpImage.transpose is False and cfg.assembleStaticSkyModel.interpImage.transpose is True
    assert not cfg.assembleStaticSkyModel.calcErrorFromInputVariance and cfg.maxNumEpochs == 3
    assert (cfg.detect.thresholdValue, cfg.detectTemplate.thresholdValue) == (5.0, 50.0)
    # an LSST field diffstack does not implement, set away from LSST's default
    p.write_text(_SAVED.replace("config.detect.doTempWideBackground=False", "config.detect.doTempWideBackground=True"))
    with pytest.warns(UserWarning, match=r"line 20: config.detect.doTempWideBackground = True is not implemented in diffstack: it runs as LSST's default, False"):
        config_from_file(p, CompareWarpConfig)
    # the class assert
    with pytest.raises(ConfigError, match=r"line 2: the file is a saved lsst.drp.tasks.assemble_coadd.CompareWarpAssembleCoaddConfig .*not a ZogyConfig"):
        config_from_file(tmp_path / "compareWarp_config.py", ZogyConfig)
    sub = tmp_path / "detect.py"
    sub.write_text("import lsst.meas.algorithms.detection\nassert type(config) == lsst.meas.algorithms.detection.SourceDetectionConfig, 'wrong'\nconfig.minPixels=7\n")
    cfg = CompareWarpConfig()
    cfg.detect.load(str(sub))
    assert cfg.detect.minPixels == 7
    with pytest.raises(ConfigError, match="not a CompareWarpAssembleCoaddConfig"):
        CompareWarpConfig().load(str(sub))
    with pytest.raises(ConfigError, match="only assert read"):
        CompareWarpConfig().loadFromString("assert config.maxNumEpochs == 2\n")
    # a typo is still an error, not a field with no effect
    with pytest.raises(ConfigError, match="unknown config field 'detect.nPeaksMaxSimpel'"):
        CompareWarpConfig().loadFromString("config.detect.nPeaksMaxSimpel = 1\n")
