"""Auto-tune: identify each fibre's thermal response at every probe from data, and PID gains from it.

In the spirit of Marlin's M306 and Klipper's PID_CALIBRATE: a short low-power run (each fibre
steps to TUNE_POWER_W in turn, staggered, while every probe is recorded at 1 Hz), then a fit.

The model. Probe i's temperature is its baseline plus, for every fibre j, the fibre's measured
power convolved with that pair's step response

    y_i(t) = b_i + sum_j (s_ij * du_j)(t),   s_ij(t) = sum_k theta_ijk basis_k(t),   theta >= 0

a non-negative mixture of fixed basis responses, each normalised to 1 at steady state:
first-order lags (the near field: light absorbed around the probe heats it at once) and the step
responses of a point source in perfused tissue at several distances (the far field: heat arriving
by conduction, late and slowly; the Pennes Green's function with liver's textbook conductivity,
diffusivity and perfusion). The weights are the data's: non-negative least squares (Lawson-Hanson)
with a small ridge, an intercept per probe, recent data weighted more (coagulation changes the
tissue as treatment goes on). Being linear in the weights, the fit is unique and needs no start
guess; being non-negative, every response is a heating one. The same fit runs again during a SHAPED
treatment on everything recorded so far (controller/control.py): a far probe that a short tune
cannot see is learnt as soon as heat reaches it.

PID gains (TEMPERATURE loops and tip limiters) come from the model: a first-order-plus-dead-time
fit to the pair's model step response over the first FOPDT_WINDOW_S, then IMC (lambda) tuning:
kp = tau / (K (tau_c + theta)), Ti = tau, Td = theta / 2.

Nothing here does I/O: the session feeds `IdentificationRun` every cycle and records the result in
the journal (`ThermalModel.to_details()`), from which `ThermalModel.from_details` rebuilds it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

# --- the identification run ----------------------------------------------------------------------
TUNE_POWER_W = 1.5  # low: about +20 degC at a tip probe in 45 s, a few % of a fibre's budget
TUNE_ON_S = 45.0  # each fibre's step; long enough for the near field's time constants
TUNE_STAGGER_S = 15.0  # fibre j starts j x this after the first: the fit separates them by onset
TUNE_TAIL_S = 15.0  # all off at the end: the decay separates the fast and slow parts
# A fibre's step ends early if one of its tip probes comes this close to the tip cap (the data stay
# valid: the fit uses the measured power, whatever it was).
TUNE_TIP_MARGIN_C = 12.0

# --- the model -------------------------------------------------------------------------------------
MODEL_DT_S = 1.0
MODEL_MEMORY_S = 900  # a pair's response is taken as settled after this (perfused liver: ~6 tau_p)
LAG_TAUS_S = (1.0, 4.0, 15.0, 50.0, 200.0)
DIFFUSION_RADII_MM = (3.0, 5.0, 8.0, 12.0, 17.0, 23.0)
# Liver, textbook values (IT'IS database; the perfusion usual in liver ablation models): these fix
# the *shape* of the far-field bases only; the data decide how much of each a pair has.
LIVER_CONDUCTIVITY_W_PER_MM_K = 0.52e-3
LIVER_DIFFUSIVITY_MM2_PER_S = 0.52 / (1079.0 * 3540.0) * 1e6
PERFUSION_TIME_CONSTANT_S = (1079.0 * 3540.0) / (6.4e-3 * 1050.0 * 3617.0)
MAX_HISTORY_S = 4 * 3600  # the longest session (config limit)
HISTORY_GAP_S = 1.0  # a longer silence between two cycles counts as no power (the safety layer trips well before)

# --- the fit ----------------------------------------------------------------------------------------
FIT_RIDGE_FRACTION = 1e-4  # ridge, relative to the mean diagonal of the normal equations
FIT_FORGET_S = 600.0  # data this old count e^-1 as much as now
FIT_MIN_SAMPLES = 20
# A refit during treatment is pulled toward the tune's model (a ridge toward it, not toward 0) with
# this weight, relative to the mean diagonal of the normal equations: where the treatment's data
# cannot tell the fibres apart (all at similar power, all the time), the tune's separate steps
# still decide; where they can (a far probe the tune never saw warm), the data win.
PRIOR_STRENGTH = 0.1
NNLS_TOLERANCE = 1e-10
NNLS_MAX_ITERATIONS = 200

# --- PID from the model -------------------------------------------------------------------------------
FOPDT_WINDOW_S = 60.0  # the settling time asked of a step response
FOPDT_DT_S = 0.25
# Closed-loop time constant: never faster than this, nor than this many dead times. Tight, because
# the loops follow a reference trajectory (controller/control.py): the gains only have to keep
# the probe on it, and a tight loop builds less integral on the way (less overshoot on arrival).
IMC_TAU_C_MIN_S = 1.5
IMC_TAU_C_PER_DEAD_TIME = 1.0
# ... nor than this share of the plant's time constant: a slow probe (a margin probe millimetres
# away) must not be asked to follow in seconds, which only a much hotter tip could do.
IMC_TAU_C_PER_TAU = 0.05
# Derivative time: theta / 2 (SIMC for FOPDT), at most this: the FT-8's noise through a large kd
# would only shake the power.
TD_MAX_S = 0.5
DERIVATIVE_FILTER_MIN_S = 0.5
# Anti-windup / override tracking time = Ti / this (see imc_gains).
TRACKING_PER_TI = 3.0
KP_RANGE_W_PER_C = (0.02, 5.0)
TI_RANGE_S = (3.0, 300.0)
# Without a tune, a TEMPERATURE loop on a tip probe uses this typical bare fibre in liver, 2 mm from
# the tip (tunes in the shipped scenarios give 15-17 degC/W, 21-27 s, 0-0.25 s; the gain and dead
# time on the high side, so the loop errs on the slow, safe side).
DEFAULT_TIP_FOPDT = (20.0, 27.0, 0.25)  # K degC/W, tau s, theta s


class TuneError(ValueError):
    """An identification that cannot be used (one line)."""


# --- bases ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Basis:
    kind: str  # "lag" or "diffusion"
    value: float  # time constant (s) or distance (mm)

    def step(self, t_s: np.ndarray) -> np.ndarray:
        """Unit step response, 1 at steady state, 0 for t <= 0."""
        t = np.asarray(t_s, dtype=float)
        out = np.zeros_like(t)
        pos = t > 0
        if self.kind == "lag":
            out[pos] = -np.expm1(-t[pos] / self.value)
            return out
        r = self.value
        alpha, tau_p = LIVER_DIFFUSIVITY_MM2_PER_S, PERFUSION_TIME_CONSTANT_S
        length = math.sqrt(alpha * tau_p)
        grow = math.exp(2.0 * r / length)
        vals = []
        for tt in t[pos]:
            a = r / (2.0 * math.sqrt(alpha * tt))
            c = math.sqrt(tt / tau_p)
            vals.append(0.5 * (math.erfc(a - c) + grow * math.erfc(a + c)))
        out[pos] = np.minimum(np.asarray(vals), 1.0)
        return out

    def label(self) -> str:
        return f"lag {self.value:g} s" if self.kind == "lag" else f"diffusion {self.value:g} mm"


BASES: tuple[Basis, ...] = tuple(Basis("lag", t) for t in LAG_TAUS_S) + tuple(Basis("diffusion", r) for r in DIFFUSION_RADII_MM)


def _basis_table(n: int) -> np.ndarray:
    """b_k(n) for n = 0..n (integer model steps), shape (K, n + 1)."""
    t = np.arange(n + 1) * MODEL_DT_S
    return np.stack([b.step(t) for b in BASES])


_STEP_TABLE = _basis_table(MODEL_MEMORY_S)  # (K, N + 1)
# response at the end of a bin to unit power during a bin n bins earlier: b(n + 1) - b(n)
_PULSE_TABLE = np.diff(_STEP_TABLE, axis=1)  # (K, N)


# --- the identified model ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Fopdt:
    gain_c_per_w: float
    tau_s: float
    dead_time_s: float
    rms_c: float  # of the FOPDT against the model's step response over the window, per W


@dataclass(frozen=True, kw_only=True)
class PidGains:
    kp_w_per_c: float
    ti_s: float
    td_s: float
    tau_d_s: float  # derivative filter
    kaw_1_per_s: float  # back-calculation

    @property
    def ki(self) -> float:
        return self.kp_w_per_c / self.ti_s

    @property
    def kd(self) -> float:
        return self.kp_w_per_c * self.td_s


def imc_gains(model: Fopdt) -> PidGains:
    """IMC (lambda) tuning of a PID for a FOPDT model; derivative on the filtered measurement."""
    k = max(model.gain_c_per_w, 1e-3)
    theta = max(model.dead_time_s, 0.0)
    tau_c = max(IMC_TAU_C_MIN_S, IMC_TAU_C_PER_DEAD_TIME * theta, IMC_TAU_C_PER_TAU * model.tau_s)
    kp = model.tau_s / (k * (tau_c + theta))
    kp = min(max(kp, KP_RANGE_W_PER_C[0]), KP_RANGE_W_PER_C[1])
    ti = min(max(model.tau_s, TI_RANGE_S[0]), TI_RANGE_S[1])
    td = min(0.5 * theta, TD_MAX_S)
    # Back-calculation toward the power really applied, tracking time Ti / TRACKING_PER_TI: a loop
    # that is not selected settles at applied + kp e / TRACKING_PER_TI, so it takes over exactly
    # when its own error reaches 0 (a tip limiter cuts in at its limit, not before, nor late);
    # with TRACKING_PER_TI = 1 this is the external-reset-feedback PI, larger follows faster.
    return PidGains(kp_w_per_c=kp, ti_s=ti, td_s=td, tau_d_s=max(DERIVATIVE_FILTER_MIN_S, td), kaw_1_per_s=TRACKING_PER_TI / ti)


DEFAULT_TIP_GAINS = imc_gains(Fopdt(gain_c_per_w=DEFAULT_TIP_FOPDT[0], tau_s=DEFAULT_TIP_FOPDT[1], dead_time_s=DEFAULT_TIP_FOPDT[2], rms_c=0.0))


_FOPDT_TAUS = np.geomspace(0.5, 600.0, 90)
_FOPDT_THETAS = np.arange(0.0, 10.0 + 1e-9, 0.25)


def fit_fopdt(t_s: np.ndarray, y: np.ndarray) -> Fopdt:
    """Least-squares K (1 - exp(-(t - theta) / tau)) to a step response (grid over theta and tau,
    K in closed form for each). On a uniform time grid from 0 whose step divides the dead-time grid's
    (the model's FOPDT_DT_S does), a dead time only shifts the theta = 0 responses: one table of them
    serves every dead time (about 1 ms instead of 10-20; the same grid point chosen)."""
    t = np.asarray(t_s, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(t) > 1 and t[0] == 0.0 and (dt := float(t[1] - t[0])) > 0.0:
        shifts = _FOPDT_THETAS / dt
        if np.allclose(np.diff(t), dt, rtol=0.0, atol=1e-9 * dt) and np.allclose(shifts, np.rint(shifts), rtol=0.0, atol=1e-9):
            return _fit_fopdt_shifted(t, y, np.rint(shifts).astype(int))
    return _fit_fopdt_grid(t, y)


def _fit_fopdt_shifted(t: np.ndarray, y: np.ndarray, shifts: np.ndarray) -> Fopdt:
    taus, n = _FOPDT_TAUS, len(t)
    f0 = -np.expm1(-t[None, :] / taus[:, None])  # (tau, t): the responses with no dead time
    cum = np.cumsum(f0 * f0, axis=1)
    ff = np.where(shifts[None, :] < n, cum[:, np.clip(n - 1 - shifts, 0, None)], 0.0)  # (tau, theta)
    fy = np.zeros((len(taus), len(shifts)))
    for j, shift in enumerate(shifts):
        if shift < n:
            fy[:, j] = f0[:, : n - shift] @ y[shift:]
    k = np.where(ff > 0, fy / np.where(ff > 0, ff, 1.0), 0.0)
    sse = float(y @ y) - 2.0 * k * fy + k * k * ff
    best_tau = np.argmin(sse, axis=0)  # per dead time, the first best; then the first best dead time
    j = int(np.argmin(sse[best_tau, np.arange(len(shifts))]))
    i = int(best_tau[j])
    return Fopdt(gain_c_per_w=float(k[i, j]), tau_s=float(taus[i]), dead_time_s=float(_FOPDT_THETAS[j]), rms_c=math.sqrt(max(float(sse[i, j]), 0.0) / len(y)))


def _fit_fopdt_grid(t_s: np.ndarray, y: np.ndarray) -> Fopdt:
    """fit_fopdt on any time grid: every dead time's responses computed."""
    taus = _FOPDT_TAUS
    best: tuple[float, float, float, float] | None = None
    for theta in _FOPDT_THETAS:
        tt = np.clip(t_s - theta, 0.0, None)
        f = -np.expm1(-tt[None, :] / taus[:, None])  # (tau, t)
        ff = np.einsum("ij,ij->i", f, f)
        fy = f @ y
        k = np.where(ff > 0, fy / np.where(ff > 0, ff, 1.0), 0.0)
        sse = float(y @ y) - 2.0 * k * fy + k * k * ff
        n = int(np.argmin(sse))
        if best is None or sse[n] < best[0]:
            best = (float(sse[n]), float(k[n]), float(taus[n]), float(theta))
    assert best is not None
    sse, k, tau, theta = best
    return Fopdt(gain_c_per_w=k, tau_s=tau, dead_time_s=theta, rms_c=math.sqrt(max(sse, 0.0) / len(y)))


@dataclass(frozen=True, kw_only=True)
class ThermalModel:
    """Identified linear model: baseline + every fibre's power through every pair's step response."""

    fibres: tuple[int, ...]  # LS-4 channels, in the order of weights' second axis
    probes: tuple[int, ...]  # FT-8 channels, in the order of weights' first axis
    weights: tuple[tuple[tuple[float, ...], ...], ...]  # [probe][fibre][basis] degC/W at steady state
    baseline_c: tuple[float, ...]  # per probe
    rms_c: tuple[float, ...]  # fit residual per probe
    samples: int  # seconds of data fitted
    source: str = "tune"  # "tune", "online" (refit during treatment) or "default"
    bases: tuple[str, ...] = field(default_factory=lambda: tuple(b.label() for b in BASES))
    # (probe, fibre) -> the pair's FOPDT, each fitted once per model (see fopdt()); not part of the value
    _fopdts: dict[tuple[int, int], Fopdt] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.bases) != tuple(b.label() for b in BASES):
            raise TuneError(f"model bases {list(self.bases)} are not this version's {[b.label() for b in BASES]}")
        w = np.asarray(self.weights, dtype=float)
        if w.shape != (len(self.probes), len(self.fibres), len(BASES)):
            raise TuneError(f"model weights have shape {w.shape}, expected {(len(self.probes), len(self.fibres), len(BASES))}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise TuneError("model weights must be finite and >= 0")

    @cached_property
    def theta(self) -> np.ndarray:
        return np.asarray(self.weights, dtype=float)

    def index(self, *, probe: int, fibre: int) -> tuple[int, int]:
        try:
            return self.probes.index(probe), self.fibres.index(fibre)
        except ValueError:
            raise KeyError((probe, fibre)) from None

    def steady_gain_c_per_w(self, *, probe: int, fibre: int) -> float:
        i, j = self.index(probe=probe, fibre=fibre)
        return float(self.theta[i, j].sum())

    def step_response(self, *, probe: int, fibre: int, t_s: np.ndarray) -> np.ndarray:
        """degC per W of a step at t = 0."""
        i, j = self.index(probe=probe, fibre=fibre)
        return self.theta[i, j] @ np.stack([b.step(np.asarray(t_s, dtype=float)) for b in BASES])

    @cached_property
    def step_table(self) -> np.ndarray:
        """s_ij(n) at integer model steps 0..MODEL_MEMORY_S, shape (P, F, N + 1)."""
        return np.einsum("pfk,kn->pfn", self.theta, _STEP_TABLE)

    def fopdt(self, *, probe: int, fibre: int) -> Fopdt:
        """The pair's FOPDT (a grid fit, milliseconds): fitted on first use, then looked up, so the
        tune's result, the loops' gains and the journal record share one fit per pair."""
        found = self._fopdts.get((probe, fibre))
        if found is None:
            t = np.arange(0.0, FOPDT_WINDOW_S + 1e-9, FOPDT_DT_S)
            found = self._fopdts[(probe, fibre)] = fit_fopdt(t, self.step_response(probe=probe, fibre=fibre, t_s=t))
        return found

    def gains(self, *, probe: int, fibre: int) -> PidGains:
        return imc_gains(self.fopdt(probe=probe, fibre=fibre))

    def precompute(self, pairs: Iterable[tuple[int, int]] = ()) -> None:
        """Fit now every FOPDT that `gains` of these (probe, fibre) pairs and `to_details()` need,
        and the step table: the controller calls this in its fit worker, off the event loop, so
        that installing and journaling the model in the control cycle only looks them up."""
        for probe, fibre in pairs:
            if probe in self.probes and fibre in self.fibres:
                self.fopdt(probe=probe, fibre=fibre)
        self.to_details()
        _ = self.step_table

    def to_details(self) -> dict[str, Any]:
        """JSON-able, for the journal (record_event details)."""
        return {
            "version": 1,
            "source": self.source,
            "fibres": list(self.fibres),
            "probes": list(self.probes),
            "bases": list(self.bases),
            "weights": [[[round(float(v), 9) for v in row] for row in per_probe] for per_probe in self.weights],
            "baseline_c": [round(float(v), 4) for v in self.baseline_c],
            "rms_c": [round(float(v), 4) for v in self.rms_c],
            "samples": self.samples,
            "gains": {
                f"{f}->{p}": {"kp_w_per_c": round(g.kp_w_per_c, 5), "ti_s": round(g.ti_s, 3), "td_s": round(g.td_s, 3)}
                for f in self.fibres
                for p in self.probes
                if self.steady_gain_c_per_w(probe=p, fibre=f) > 1.0
                for g in (self.gains(probe=p, fibre=f),)
            },
        }

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> ThermalModel:
        if details.get("version") != 1:
            raise TuneError(f"model version {details.get('version')!r} is not 1")
        try:
            return cls(
                fibres=tuple(int(f) for f in details["fibres"]),
                probes=tuple(int(p) for p in details["probes"]),
                weights=tuple(tuple(tuple(float(v) for v in row) for row in per_probe) for per_probe in details["weights"]),
                baseline_c=tuple(float(v) for v in details["baseline_c"]),
                rms_c=tuple(float(v) for v in details["rms_c"]),
                samples=int(details["samples"]),
                source=str(details.get("source", "tune")),
                bases=tuple(str(b) for b in details["bases"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, TuneError):
                raise
            raise TuneError(f"model details unusable: {err}") from None


# --- the record ---------------------------------------------------------------------------------------


class History:
    """Per-second bins of every fibre's mean measured power and every probe's temperature at the
    bin's end (the last valid reading), fed once per control cycle. Keeps, bin by bin, each fibre's
    power through every basis (the regressors) and the exponentially weighted normal equations of
    the fit from `begin_fit()` on, so a refit costs a small NNLS, not a pass over the record."""

    def __init__(self, *, fibres: Sequence[int], probes: Sequence[int], dt_s: float = MODEL_DT_S) -> None:
        self.fibres = tuple(fibres)
        self.probes = tuple(probes)
        self.dt_s = dt_s
        n_x = len(self.fibres) * len(BASES) + 1
        # preallocated, grown by doubling: a bin is appended in O(1), not by copying the record
        self._n = 0
        self._u = np.zeros((64, len(self.fibres)))
        self._y = np.zeros((64, len(self.probes)))
        self._phi = np.zeros((64, n_x - 1))
        self._bin_start: float | None = None
        self._energy = [0.0] * len(self.fibres)
        self._last_t: float | None = None
        self._last_p = [0.0] * len(self.fibres)
        self._last_y: list[float | None] = [None] * len(self.probes)
        self._decay = math.exp(-dt_s / FIT_FORGET_S)
        self.fit_start: int | None = None
        self.gram = np.zeros((n_x, n_x))
        self.rhs = np.zeros((n_x, len(self.probes)))
        self.yy = np.zeros(len(self.probes))
        self.weight = 0.0
        self.fitted_bins = 0

    def __len__(self) -> int:
        return self._n

    def snapshot(self) -> History:
        """An independent copy of the record and the fit's sums, for a fit in another thread while
        this history goes on recording (add() writes its arrays in place)."""
        snap = copy.copy(self)
        snap._u, snap._y, snap._phi = (arr[: max(self._n, 64)].copy() for arr in (self._u, self._y, self._phi))
        snap.gram, snap.rhs, snap.yy = self.gram.copy(), self.rhs.copy(), self.yy.copy()
        snap._energy, snap._last_p, snap._last_y = list(self._energy), list(self._last_p), list(self._last_y)
        return snap

    @property
    def u(self) -> np.ndarray:
        """(T, F): each fibre's mean power in every bin, W (a view: do not write)."""
        return self._u[: self._n]

    @property
    def y(self) -> np.ndarray:
        """(T, P): each probe's temperature at the end of every bin, degC (a view)."""
        return self._y[: self._n]

    @property
    def phi(self) -> np.ndarray:
        """(T, F x K): the regressors of every bin (a view)."""
        return self._phi[: self._n]

    @property
    def latest_c(self) -> tuple[float | None, ...]:
        return tuple(self._last_y)

    def begin_fit(self) -> None:
        """The fit counts bins from the next one on (earlier power is still convolved in)."""
        self.fit_start = self._n
        self.gram[:] = 0.0
        self.rhs[:] = 0.0
        self.yy[:] = 0.0
        self.weight = 0.0
        self.fitted_bins = 0

    def add(self, *, now_s: float, power_w: Sequence[float], temperature_c: Sequence[float | None]) -> int:
        """power_w, temperature_c: by LS-4 / FT-8 channel. Returns how many bins were completed."""
        for n, p in enumerate(self.probes):
            t = temperature_c[p] if p < len(temperature_c) else None
            if t is not None:
                self._last_y[n] = float(t)
        powers = [max(0.0, float(power_w[f])) for f in self.fibres]
        if self._bin_start is None:
            self._bin_start, self._last_t, self._last_p = now_s, now_s, powers
            return 0
        assert self._last_t is not None
        if now_s - self._last_t > HISTORY_GAP_S:
            # no cycle for a while (no session proposing: between illuminations): nothing emitted
            self._last_p = [0.0] * len(self.fibres)
        done = 0
        t = self._last_t
        while now_s - t > 1e-12:
            end = min(now_s, self._bin_start + self.dt_s)
            for j, p in enumerate(self._last_p):  # the power held since the last call
                self._energy[j] += p * (end - t)
            t = end
            if end >= self._bin_start + self.dt_s - 1e-9:
                self._close_bin()
                done += 1
        self._last_t, self._last_p = now_s, powers
        return done

    def _close_bin(self) -> None:
        assert self._bin_start is not None
        u = np.asarray([e / self.dt_s for e in self._energy])
        fallback = next((v for v in self._last_y if v is not None), 37.0)
        y = np.asarray([v if v is not None else fallback for v in self._last_y])
        if self._n == len(self._u):
            self._grow()
        t = self._n
        self._u[t], self._y[t] = u, y
        self._n += 1
        n = min(self._n, _PULSE_TABLE.shape[1])
        recent = self._u[t - n + 1 : t + 1][::-1]  # u[t], u[t-1], ...
        phi = (_PULSE_TABLE[:, :n] @ recent).T.reshape(-1)  # (F x K), fibre-major
        self._phi[t] = phi
        if self.fit_start is not None:
            x = np.append(phi, 1.0)
            self.gram *= self._decay
            self.gram += np.outer(x, x)
            self.rhs *= self._decay
            self.rhs += np.outer(x, y)
            self.yy = self.yy * self._decay + y * y
            self.weight = self.weight * self._decay + 1.0
            self.fitted_bins += 1
        self._energy = [0.0] * len(self.fibres)
        self._bin_start += self.dt_s

    def _grow(self) -> None:
        keep = int(MAX_HISTORY_S / self.dt_s)
        if self._n >= 2 * keep:  # full: drop the oldest half (the fit's sums already hold them, decayed)
            cut = self._n - keep
            for name in ("_u", "_y", "_phi"):
                arr = getattr(self, name)
                arr[:keep] = arr[cut : self._n]
            self._n = keep
            if self.fit_start is not None:
                self.fit_start = max(0, self.fit_start - cut)
            return
        for name in ("_u", "_y", "_phi"):
            arr = getattr(self, name)
            grown = np.zeros((2 * len(arr), arr.shape[1]))
            grown[: self._n] = arr[: self._n]
            setattr(self, name, grown)


# --- the fit ---------------------------------------------------------------------------------------------


def regressors(u: np.ndarray) -> np.ndarray:
    """phi[t, j, k] = sum_n pulse_k(n) u[t - n, j]: every fibre's power through every basis."""
    t_len, n_fib = u.shape
    out = np.empty((t_len, n_fib, len(BASES)))
    n = min(t_len, _PULSE_TABLE.shape[1])
    for j in range(n_fib):
        for k in range(len(BASES)):
            out[:, j, k] = np.convolve(u[:, j], _PULSE_TABLE[k, :n])[:t_len]
    return out


def nnls_gram(gram: np.ndarray, rhs: np.ndarray, *, free: np.ndarray | None = None) -> np.ndarray:
    """min 1/2 x'Gx - b'x with x >= 0 (except where `free`): Lawson-Hanson active set on the normal
    equations. G must be positive definite (the ridge sees to that)."""
    n = len(rhs)
    free = np.zeros(n, dtype=bool) if free is None else free
    passive = free.copy()
    x = np.zeros(n)
    if passive.any():
        x[passive] = np.linalg.solve(gram[np.ix_(passive, passive)], rhs[passive])
    scale = max(1.0, float(np.abs(rhs).max()))
    for _ in range(NNLS_MAX_ITERATIONS):
        w = rhs - gram @ x
        candidates = np.where(~passive, w, -np.inf)
        j = int(np.argmax(candidates))
        if candidates[j] <= NNLS_TOLERANCE * scale:
            break
        passive[j] = True
        z = x
        for _inner in range(n + 1):
            z = np.zeros(n)
            z[passive] = np.linalg.solve(gram[np.ix_(passive, passive)], rhs[passive])
            bad = passive & ~free & (z <= 0.0)
            if not bad.any():
                break
            ratio = x[bad] / (x[bad] - z[bad])
            a = float(ratio.min())
            x = x + a * (z - x)
            passive &= ~(~free & (x <= NNLS_TOLERANCE))
        x = z
    x[~free] = np.maximum(x[~free], 0.0)
    return x


def fit_model(history: History, *, source: str = "tune", prior: ThermalModel | None = None) -> ThermalModel:
    """Fit every probe's weights on the history's normal equations (bins since `begin_fit`);
    with a `prior` model, the ridge pulls toward its weights (PRIOR_STRENGTH) instead of toward 0."""
    if history.fit_start is None or history.fitted_bins < FIT_MIN_SAMPLES:
        raise TuneError(f"identification needs at least {FIT_MIN_SAMPLES} s of data, has {history.fitted_bins}")
    if not np.any(history.u[history.fit_start :] > 0):
        raise TuneError("identification saw no power delivered: was the footswitch pressed?")
    n_fib, n_bas = len(history.fibres), len(BASES)
    gram = history.gram.copy()
    n_x = gram.shape[0]
    mean_diag = float(np.trace(gram[:-1, :-1])) / max(1, n_x - 1)
    strength = PRIOR_STRENGTH if prior is not None else FIT_RIDGE_FRACTION
    ridge = strength * mean_diag + 1e-12
    gram[:-1, :-1] += ridge * np.eye(n_x - 1)
    free = np.zeros(n_x, dtype=bool)
    free[-1] = True  # the baseline
    prior_w = None
    if prior is not None:
        ip = [prior.probes.index(p) for p in history.probes]
        jf = [prior.fibres.index(f) for f in history.fibres]
        prior_w = prior.theta[np.ix_(ip, jf)].reshape(len(history.probes), -1)
    weights, baselines, rms = [], [], []
    for i in range(len(history.probes)):
        rhs = history.rhs[:, i].copy()
        if prior_w is not None:
            rhs[:-1] += ridge * prior_w[i]
        sol = nnls_gram(gram, rhs, free=free)
        rhs = history.rhs[:, i]
        sse = float(history.yy[i] - 2.0 * sol @ rhs + sol @ history.gram @ sol)
        rms.append(math.sqrt(max(sse, 0.0) / max(history.weight, 1e-12)))
        weights.append(sol[:-1].reshape(n_fib, n_bas))
        baselines.append(float(sol[-1]))
    return ThermalModel(
        fibres=history.fibres,
        probes=history.probes,
        weights=tuple(tuple(tuple(float(v) for v in row) for row in wp) for wp in weights),
        baseline_c=tuple(baselines),
        rms_c=tuple(rms),
        samples=history.fitted_bins,
        source=source,
    )


# --- the run ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TuneSettings:
    power_w: float = TUNE_POWER_W
    on_s: float = TUNE_ON_S
    stagger_s: float = TUNE_STAGGER_S
    tail_s: float = TUNE_TAIL_S
    tip_margin_c: float = TUNE_TIP_MARGIN_C

    def __post_init__(self) -> None:
        if not (0.0 < self.power_w <= 10.0 and self.on_s >= 10.0 and self.stagger_s >= 0.0 and self.tail_s >= 0.0 and self.tip_margin_c >= 2.0):
            raise TuneError("tune settings: power 0-10 W, on >= 10 s, stagger and tail >= 0 s, tip margin >= 2 degC")


@dataclass(frozen=True, kw_only=True)
class TuneResult:
    model: ThermalModel
    duration_s: float  # emitting time the run took
    energy_j: tuple[float, ...]  # per fibre, measured
    gains: dict[int, PidGains]  # fibre -> gains on its control (or tip) probe
    message: str


class IdentificationRun:
    """The schedule of a tune and its record. Time advances only while the LS-4 emits, so a pause
    stretches the run instead of spoiling it (the fit uses the measured power whatever it was)."""

    def __init__(
        self,
        *,
        fibres: Sequence[int],
        probes: Sequence[int],
        max_power_w: Mapping[int, float],
        tip_probes: Mapping[int, Sequence[int]],
        tip_cap_c: float,
        settings: TuneSettings = TuneSettings(),
        history: History | None = None,
    ) -> None:
        self.fibres = tuple(fibres)
        self.settings = settings
        self.power_w = {f: min(settings.power_w, max_power_w[f]) for f in self.fibres}
        self.tip_probes = {f: tuple(tip_probes.get(f, ())) for f in self.fibres}
        self.tip_limit_c = tip_cap_c - settings.tip_margin_c
        self.history = history if history is not None else History(fibres=self.fibres, probes=probes)
        self.history.begin_fit()
        self.start_bin = len(self.history)
        self.elapsed_s = 0.0
        self.stopped_early: set[int] = set()
        self._last_now: float | None = None

    @property
    def duration_s(self) -> float:
        s = self.settings
        return max(0, len(self.fibres) - 1) * s.stagger_s + s.on_s + s.tail_s

    @property
    def done(self) -> bool:
        return self.elapsed_s >= self.duration_s - 1e-9

    def window(self, fibre: int) -> tuple[float, float]:
        start = self.fibres.index(fibre) * self.settings.stagger_s
        return start, start + self.settings.on_s

    def step(self, *, now_s: float, emitting: bool, output_w: Sequence[float], temperature_c: Sequence[float | None]) -> dict[int, float]:
        """Record this cycle; returns the power to ask of each fibre (W)."""
        if self._last_now is not None and emitting:
            self.elapsed_s += max(0.0, now_s - self._last_now)
        self._last_now = now_s
        self.history.add(now_s=now_s, power_w=output_w, temperature_c=temperature_c)
        out: dict[int, float] = {}
        for f in self.fibres:
            hot = any((t := temperature_c[p]) is not None and t >= self.tip_limit_c for p in self.tip_probes[f] if p < len(temperature_c))
            if hot:
                self.stopped_early.add(f)
            start, end = self.window(f)
            on = start <= self.elapsed_s < end and f not in self.stopped_early and not self.done
            out[f] = self.power_w[f] if on else 0.0
        return out

    def result(self, *, control_probes: Mapping[int, int]) -> TuneResult:
        model = fit_model(self.history, source="tune")
        u = self.history.u[self.start_bin :]
        energy = tuple(float(v) for v in u.sum(axis=0) * self.history.dt_s)
        gains = {f: model.gains(probe=p, fibre=f) for f, p in control_probes.items() if p in model.probes}
        parts = [
            f"fibre {f}: {model.steady_gain_c_per_w(probe=p, fibre=f):.1f} degC/W at probe {p}, "
            f"kp {g.kp_w_per_c:.3f} W/degC Ti {g.ti_s:.1f} s"
            for f, p in control_probes.items()
            if p in model.probes
            for g in (gains[f],)
        ]
        early = f"; steps ended early at the tip margin: fibres {sorted(self.stopped_early)}" if self.stopped_early else ""
        message = f"tune done in {self.elapsed_s:.0f} s, fit rms {max(model.rms_c):.2f} degC; " + "; ".join(parts) + early
        return TuneResult(model=model, duration_s=self.elapsed_s, energy_j=energy, gains=gains, message=message)
