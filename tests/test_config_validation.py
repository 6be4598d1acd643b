"""Every stage config rejects out-of-range and non-finite settings at construction, with a one-line
ValueError naming the setting, whether built directly in Python or from CLI strings (registry.make_config)."""
from __future__ import annotations

import dataclasses
import math
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minirlvr import registry
from minirlvr.baselines import (DynamicSamplingConfig, GRPOAdvantageConfig, OverlongConfig, PPOClipConfig,
                                ReinforcePPConfig)
from minirlvr.methods.agentic_aepo import AgenticAepoConfig
from minirlvr.methods.ares import AresLossConfig, AresRewardConfig
from minirlvr.methods.bapo import BapoConfig
from minirlvr.methods.entropy_mechanism import ClipCovConfig, KLCovConfig
from minirlvr.methods.bupo import BupoConfig
from minirlvr.methods.canon import CanonConfig
from minirlvr.methods.cispo import CISPOConfig
from minirlvr.methods.clipping_bias import RandomRewardConfig
from minirlvr.methods.copo import CopoAdvantageConfig, CopoLossConfig
from minirlvr.methods.dler import DlerAdvantageConfig, TruncationRewardConfig
from minirlvr.methods.empg import EmpgConfig
from minirlvr.methods.forking_tokens import ForkingTokensConfig
from minirlvr.methods.gmpo import GMPOConfig
from minirlvr.methods.gspo import GSPOConfig
from minirlvr.methods.hicra import HicraConfig
from minirlvr.methods.implicit_prm import ImplicitPRMRewardConfig, PrimeConfig
from minirlvr.methods.lp_reg import LpRegConfig, ProxyMassConfig
from minirlvr.methods.pear import PearConfig
from minirlvr.methods.riskpo import RiskpoConfig
from minirlvr.methods.sapo import SAPOConfig
from minirlvr.methods.siren import SirenConfig
from minirlvr.methods.steer import SteerConfig
from minirlvr.methods.ucas import UcasConfig
from minirlvr.methods.verl_rank import EffectiveRankConfig, EffectiveRankShapingConfig
from minirlvr.trainer import TrainConfig, build_pipeline

INF = math.inf
# (config, setting, lo, hi, lo_open, hi_open): the documented range of each numeric setting
PPO_RANGES = [("clip_low", 0.0, 1.0, False, False), ("clip_high", 0.0, INF, False, False),
              ("clip_ratio_c", 1.0, INF, True, False), ("max_len", 1, INF, False, False),
              ("kl_coef", 0.0, INF, False, False), ("kl_clamp", 0.0, INF, True, False),
              ("entropy_coef", -INF, INF, False, False)]
PPO_CONFIGS = (PPOClipConfig, ForkingTokensConfig, SirenConfig, CopoLossConfig, BupoConfig,  # PPOClipConfig + own
               SteerConfig, LpRegConfig, AgenticAepoConfig, AresLossConfig)
RANGES = ([(cls, *r) for cls in PPO_CONFIGS for r in PPO_RANGES] + [
    (GSPOConfig, "clip_low", 0.0, 1.0, False, False),
    (GSPOConfig, "clip_high", 0.0, INF, False, False),
    (CISPOConfig, "clip_low", 0.0, 1.0, False, False),
    (CISPOConfig, "clip_high", 0.0, INF, False, False),
    (GMPOConfig, "clip_low", 0.0, INF, False, False),
    (GMPOConfig, "clip_high", 0.0, INF, False, False),
    (SAPOConfig, "tau_pos", 0.0, INF, True, False),
    (SAPOConfig, "tau_neg", 0.0, INF, True, False),
    (SirenConfig, "reg_coef", 0.0, INF, False, False),
    (SirenConfig, "top_p", 0.0, 1.0, True, False),
    (SirenConfig, "top_k", 1, INF, False, False),
    (SirenConfig, "mask_ratio", 0.0, 1.0, False, False),
    (SirenConfig, "junk_demos", 1, INF, False, False),
    (CopoAdvantageConfig, "eps", 0.0, INF, True, False),
    (CopoAdvantageConfig, "gamma", 0.0, INF, False, False),
    (CopoAdvantageConfig, "rho", -INF, INF, False, False),
    (BupoConfig, "layer", 1, INF, False, False),
    (BupoConfig, "iterative_steps", 0, INF, False, False),
    (ForkingTokensConfig, "rho", 0.0, 1.0, True, False),
    (SteerConfig, "lambda_min", 0.0, 1.0, True, False),   # the weights bracket 1: lambda_min <= 1 <= lambda_max
    (SteerConfig, "lambda_max", 1.0, INF, False, False),
    (LpRegConfig, "kappa", 0.0, 1.0, False, False),
    (LpRegConfig, "rho", 0.0, 1.0, False, False),
    (LpRegConfig, "beta", 0.0, INF, False, False),
    (LpRegConfig, "min_selected", 1, INF, False, False),
    (ProxyMassConfig, "kappa", 0.0, 1.0, False, False),
    (ProxyMassConfig, "spark_max", 0.0, 1.0, False, False),
    (GRPOAdvantageConfig, "eps", 0.0, INF, True, False),
    (ReinforcePPConfig, "kl_coef", 0.0, INF, False, False),
    (ReinforcePPConfig, "eps", 0.0, INF, True, False),
    (DynamicSamplingConfig, "max_tries", 1, INF, False, False),
    (OverlongConfig, "buffer", 1, INF, False, False),
    (OverlongConfig, "penalty_factor", 0.0, INF, False, False),
    (ClipCovConfig, "clip_ratio", 0.0, 1.0, False, False),
    (ClipCovConfig, "clip_low", 0.0, 1.0, False, False),
    (ClipCovConfig, "clip_high", 0.0, INF, False, False),
    (KLCovConfig, "kl_ratio", 0.0, 1.0, False, False),
    (KLCovConfig, "ppo_kl_coef", 0.0, INF, False, False),
    (RandomRewardConfig, "p", 0.0, 1.0, False, False),
    (RandomRewardConfig, "mix", 0.0, 1.0, False, False),
    (AgenticAepoConfig, "alpha", 0.0, INF, False, False),
    (BapoConfig, "rho0", 0.0, 1.0, False, True),
    (BapoConfig, "lower_start", 0.0, 1.0, True, False),
    (BapoConfig, "lower_max", 0.0, 1.0, True, False),
    (BapoConfig, "lower_step", 0.0, INF, False, False),
    (BapoConfig, "upper_start", 1.0, INF, False, False),
    (BapoConfig, "upper_max", 1.0, INF, False, False),
    (BapoConfig, "upper_step", 0.0, INF, False, False),
    (BapoConfig, "eps", 0.0, INF, False, False),
    (BapoConfig, "clip_ratio_c", 1.0, INF, True, False),
    (UcasConfig, "eps", 0.0, INF, True, False),
    (UcasConfig, "beta_pos", 0.0, INF, False, False),
    (UcasConfig, "beta_neg", 0.0, INF, False, False),
    (UcasConfig, "gamma", 0.0, INF, False, False),
    (CanonConfig, "mu", 0.0, 1.0, False, False),
    (CanonConfig, "alpha", 0.0, INF, False, False),
    (CanonConfig, "b", -INF, INF, False, False),
    (HicraConfig, "eps", 0.0, INF, True, False),
    (HicraConfig, "alpha", 0.0, 1.0, False, False),
    (ImplicitPRMRewardConfig, "beta", 0.0, INF, True, False),
    (PrimeConfig, "dense_coef", 0.0, INF, False, False),
    (PrimeConfig, "outcome_coef", 0.0, INF, False, False),
    (PrimeConfig, "eps", 0.0, INF, True, False),
    (EmpgConfig, "k", 0.0, INF, False, False),
    (EmpgConfig, "k_f", 0.0, INF, False, False),
    (EmpgConfig, "zeta", 0.0, INF, False, False),
    (EmpgConfig, "eps", 0.0, INF, True, False),
    (RiskpoConfig, "bundle_size", 1, INF, False, False),
    (RiskpoConfig, "omega", 0.0, INF, False, False),
    (RiskpoConfig, "upper_weight", 0.0, INF, False, False),
    (RiskpoConfig, "eps", 0.0, INF, True, False),
    (RiskpoConfig, "lr_q", 0.0, INF, False, False),
    *[(cls, *r) for cls in (EffectiveRankConfig, EffectiveRankShapingConfig) for r in (
        ("layer", 1, INF, False, False), ("stride", 1, INF, False, False), ("eta", 0.0, 1.0, True, False))],
    (EffectiveRankShapingConfig, "eps", 0.0, INF, True, False),
    (EffectiveRankShapingConfig, "coef", 0.0, INF, False, False),
    (EffectiveRankShapingConfig, "gain", 0.0, INF, False, False),
    (EffectiveRankShapingConfig, "clip", 0.0, INF, True, False),
    (AresRewardConfig, "window", 1, INF, False, False),
    (AresRewardConfig, "percentile", 0.0, 100.0, False, False),
    (AresRewardConfig, "tau_momentum", 0.0, 1.0, False, False),
    (AresRewardConfig, "tau_init", -INF, INF, False, False),
    (AresRewardConfig, "alpha_init", 0.0, 2.0, False, False),
    (AresRewardConfig, "alpha_lr", 0.0, INF, False, False),
    (AresLossConfig, "kl_target", 0.0, INF, True, False),
    (AresLossConfig, "ema_decay", 0.0, 1.0, False, False),
    (AresLossConfig, "beta_lr", 0.0, INF, False, False),
    (AresLossConfig, "beta_clip", 0.0, INF, False, False),
    (AresLossConfig, "update_interval", 1, INF, False, False),
    (AresLossConfig, "deadzone", 0.0, INF, False, False),
    (TruncationRewardConfig, "max_len", 1, INF, False, False),
    (DlerAdvantageConfig, "eps", 0.0, INF, True, False),
    (PearConfig, "a", 0.0, INF, False, False),
    (PearConfig, "b", 0.0, INF, False, False),
    (PearConfig, "score", -INF, INF, False, False),
    (PearConfig, "format_score", -INF, INF, False, False),
    (PearConfig, "cap", -INF, INF, False, False),
])
# settings whose range depends on another setting: checked by their own tests below, not by RANGES
PAIRED = {(RiskpoConfig, "alpha"), (RiskpoConfig, "beta")}   # 0 <= alpha <= beta <= 1
IDS = [f"{c.__name__}.{f}" for c, f, *_ in RANGES]


def registered_configs() -> list[type]:
    """The library's registered configs (test-only stages that other test modules register are left out)."""
    return sorted({e.config for fns in (*registry.list_stages().values(), registry.list_probes()) for e in fns.values()
                   if e.config and e.fn.__module__.startswith("minirlvr.")}, key=lambda c: c.__name__)


def number_fields(cls) -> dict[str, type]:
    """name -> int / float for every numeric (or Optional numeric) field."""
    out = {}
    for name, typ in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(typ) if a is not type(None)] or [typ]
        if len(args) == 1 and args[0] in (int, float):
            out[name] = args[0]
    return out


def inside(v, lo, hi, lo_open, hi_open) -> bool:
    return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)


def raises_naming(cls, name, fn):
    with pytest.raises(ValueError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and name in msg, msg
    return msg


# ------------------------------------------------------------------ defaults, recipes, coverage

@pytest.mark.parametrize("cls", registered_configs(), ids=lambda c: c.__name__)
def test_defaults_are_valid_and_every_registered_config_validates(cls):
    cls()                                            # the defaults pass their own checks
    assert hasattr(cls, "__post_init__"), f"{cls.__name__} has no range checks"


def test_every_numeric_setting_has_a_documented_range():
    """A new numeric setting of a registered config must get a range here (and a check in its __post_init__);
    seeds and the Clip-Cov band (checked as cov_lb < cov_ub, see below) are the only free ones."""
    covered = {(c, f) for c, f, *_ in RANGES}
    free = {"seed", "cov_lb", "cov_ub"}
    for cls in registered_configs():
        missing = [f for f in number_fields(cls) if (cls, f) not in covered | PAIRED and f not in free]
        assert not missing, f"{cls.__name__}: no range for {missing}"


@pytest.mark.parametrize("name", list(registry.list_recipes()))
def test_every_recipe_builds_valid_configs(name):
    recipe = registry.get_recipe(name)
    for stage in registry.STAGES:
        entry = registry.get_stage(stage, getattr(recipe, stage))
        cfg = registry.make_config(entry.config, getattr(recipe, f"{stage}_cfg"), where=f"{stage} {entry.name!r}")
        assert cfg is None or dataclasses.is_dataclass(cfg)
    build_pipeline(TrainConfig(recipe=name))          # the trainer's own path


# ------------------------------------------------------------------ ranges

@pytest.mark.parametrize("cls,name,lo,hi,lo_open,hi_open", RANGES, ids=IDS)
def test_range_boundaries(cls, name, lo, hi, lo_open, hi_open):
    kind = number_fields(cls)[name]
    for edge, is_open in ((lo, lo_open), (hi, hi_open)):
        if math.isinf(edge):
            continue
        if is_open:
            raises_naming(cls, name, lambda: cls(**{name: kind(edge)}))
        else:
            cls(**{name: kind(edge)})
        step = 1 if kind is int else 1e-9 * max(1.0, abs(edge))
        outside = edge - step if edge == lo else edge + step
        raises_naming(cls, name, lambda: cls(**{name: kind(outside)}))


@pytest.mark.parametrize("cls,name,lo,hi,lo_open,hi_open", RANGES, ids=IDS)
@given(data=st.data())
def test_accepted_iff_in_range(cls, name, lo, hi, lo_open, hi_open, data):
    kind = number_fields(cls)[name]
    v = data.draw(st.integers(-10 ** 6, 10 ** 6) if kind is int else
                  st.one_of(st.floats(-1e6, 1e6), st.floats(-2.0, 2.0), st.sampled_from([0.0, 1.0, -0.0])))
    if inside(v, lo, hi, lo_open, hi_open):
        assert getattr(cls(**{name: v}), name) == v
        assert getattr(registry.make_config(cls, {name: str(v)}), name) == v    # the CLI path
    else:
        msg = raises_naming(cls, name, lambda: cls(**{name: v}))
        assert msg.startswith(f"{cls.__name__}.{name} must be ")
        raises_naming(cls, name, lambda: registry.make_config(cls, {name: str(v)}, where="stage 'x'"))


@pytest.mark.parametrize("cls", registered_configs(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_rejected_everywhere(cls, bad):
    for name, kind in number_fields(cls).items():
        if kind is not float:
            continue
        msg = raises_naming(cls, name, lambda: cls(**{name: bad}))              # direct construction
        assert "finite" in msg
        for text in (str(bad), str(bad).upper()):                                 # CLI strings: nan, inf, -inf
            msg = raises_naming(cls, name, lambda: registry.make_config(cls, {name: text}, where="loss 'x'"))
            assert "finite" in msg


def test_clip_cov_band_must_be_non_empty():
    ClipCovConfig(cov_lb=-1.0, cov_ub=-0.5)
    for lb, ub in ((5.0, 5.0), (5.0, 1.0)):
        msg = raises_naming(ClipCovConfig, "cov_lb", lambda: ClipCovConfig(cov_lb=lb, cov_ub=ub))
        assert "cov_ub" in msg
    raises_naming(ClipCovConfig, "cov_ub", lambda: ClipCovConfig(cov_ub=math.nan))


@given(a=st.one_of(st.floats(-2.0, 2.0), st.sampled_from([0.0, 1.0])),
       b=st.one_of(st.floats(-2.0, 2.0), st.sampled_from([0.0, 1.0])))
def test_riskpo_quantile_levels_must_satisfy_0_le_alpha_le_beta_le_1(a, b):
    if 0.0 <= a <= b <= 1.0:
        cli = registry.make_config(RiskpoConfig, {"alpha": str(a), "beta": str(b)})
        assert (RiskpoConfig(alpha=a, beta=b).alpha, cli.beta) == (a, b)
        return
    name = "alpha" if not 0.0 <= a <= 1.0 or (0.0 <= b <= 1.0 and a > b) else "beta"
    msg = raises_naming(RiskpoConfig, name, lambda: RiskpoConfig(alpha=a, beta=b))
    assert msg.startswith(f"RiskpoConfig.{name} must be ")
    raises_naming(RiskpoConfig, name, lambda: registry.make_config(RiskpoConfig, {"alpha": str(a), "beta": str(b)},
                                                                   where="advantage 'riskpo'"))


def test_subclasses_keep_the_checks():
    """ForkingTokensConfig runs PPOClipConfig's checks too, and so does a user's subclass without its own
    __post_init__ (tutorial 01's pattern)."""
    raises_naming(ForkingTokensConfig, "clip_low", lambda: ForkingTokensConfig(clip_low=-1.0))
    raises_naming(ForkingTokensConfig, "clip_ratio_c", lambda: ForkingTokensConfig(clip_ratio_c=0.5))

    @dataclasses.dataclass
    class Damped(PPOClipConfig):
        gamma: float = 1.0

    raises_naming(Damped, "clip_high", lambda: Damped(clip_high=-0.1))
    assert Damped(gamma=2.0).gamma == 2.0


def test_messages_and_the_cli_path():
    with pytest.raises(ValueError, match=r"^PPOClipConfig\.clip_low must be in \[0, 1\], got -1\.0$"):
        PPOClipConfig(clip_low=-1.0)
    with pytest.raises(ValueError, match=r"^ForkingTokensConfig\.rho must be in \(0, 1\], got 0\.0$"):
        ForkingTokensConfig(rho=0.0)
    with pytest.raises(ValueError, match=r"^PPOClipConfig\.clip_ratio_c must be > 1, got 1\.0$"):
        PPOClipConfig(clip_ratio_c=1.0)
    # `--set loss.clip_low=-1` and `--set loss.clip_high=nan` fail when the pipeline is built
    with pytest.raises(ValueError, match=r"loss 'ppo_clip': PPOClipConfig\.clip_low must be in \[0, 1\], got -1\.0"):
        build_pipeline(TrainConfig(overrides={"loss.clip_low": "-1"}))
    with pytest.raises(ValueError, match=r"loss 'ppo_clip'\.clip_high must be finite, got 'nan'"):
        build_pipeline(TrainConfig(overrides={"loss.clip_high": "nan"}))
    with pytest.raises(ValueError, match=r"clip_ratio_c.*fits none of.*must be finite"):
        build_pipeline(TrainConfig(recipe="dapo", overrides={"loss.clip_ratio_c": "inf"}))
    with pytest.raises(ValueError, match=r"rollout 'dynamic': DynamicSamplingConfig\.max_tries must be >= 1"):
        build_pipeline(TrainConfig(recipe="dapo", overrides={"rollout.max_tries": "0"}))


@pytest.mark.parametrize("value", [True, "0.2", [0.2]])
def test_check_range_wants_a_number(value):
    cfg = PPOClipConfig()
    cfg.clip_low = value                  # bypassing __init__, as a later assignment could
    with pytest.raises(ValueError, match=r"^PPOClipConfig\.clip_low must be a number"):
        registry.check_range(cfg, "clip_low", lo=0.0, hi=1.0)


def test_check_range_none_passes_and_open_bounds():
    cfg = PPOClipConfig()
    registry.check_range(cfg, "clip_ratio_c", lo=1.0, lo_open=True)          # None: an Optional setting, off
    cfg.clip_high = 0.5
    registry.check_range(cfg, "clip_high", hi=0.5)
    with pytest.raises(ValueError, match=r"must be < 0.5, got 0.5"):
        registry.check_range(cfg, "clip_high", hi=0.5, hi_open=True)
    with pytest.raises(ValueError, match=r"must be in \[0, 0.5\), got 0.5"):
        registry.check_range(cfg, "clip_high", lo=0.0, hi=0.5, hi_open=True)


# ------------------------------------------------------------------ tuple / list / dict settings

@dataclasses.dataclass
class _Shapes:
    levels: tuple[int, ...] = (1,)
    band: tuple[float, float] = (0.0, 1.0)
    names: list[str] = dataclasses.field(default_factory=list)
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    level: int | tuple[int, ...] | None = None


@pytest.mark.parametrize("key,value,want", [
    ("levels", "1,2,3", (1, 2, 3)), ("levels", "(1, 2)", (1, 2)), ("levels", "[4]", (4,)), ("levels", "", ()),
    ("levels", [1, 2.0], (1, 2)), ("band", "(0.1, 0.9)", (0.1, 0.9)), ("band", "0,1", (0.0, 1.0)),
    ("names", "a, b", ["a", "b"]), ("names", ("x",), ["x"]), ("names", "['a', 'b']", ["a", "b"]),
    ("weights", "{'a': 1, 'b': 0.5}", {"a": 1.0, "b": 0.5}), ("weights", {"a": "2"}, {"a": 2.0}),
    ("level", "2", 2), ("level", "1,2", (1, 2)), ("level", "none", None), ("level", (3, 4), (3, 4)),
])
def test_container_settings_are_parsed_and_typed(key, value, want):
    got = getattr(registry.make_config(_Shapes, {key: value}), key)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("key,value,message", [
    ("levels", "1,x", r"levels\[1\]: expected int, got 'x'"),
    ("levels", "1.5", r"levels\[0\]: expected int, got .1\.5."),
    ("levels", 3, "expected a tuple, got 3"),
    ("band", "1,2,3", r"expected 2 values \(tuple\[float, float\]\), got 3"),
    ("band", "(nan, 1)", r"band\[0\] must be finite"),
    ("names", [1], r"names\[0\]: expected a string"),
    ("weights", "[1", "expected a dict"),
    ("weights", {"a": "x"}, r"weights\['a'\]: expected float"),
    ("level", "1,x", "fits none of"),
])
def test_container_settings_give_clear_errors(key, value, message):
    with pytest.raises(ValueError, match=message) as e:
        registry.make_config(_Shapes, {key: value}, where="loss 'x'")
    assert "\n" not in str(e.value) and f"loss 'x'.{key}" in str(e.value)
