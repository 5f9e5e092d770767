"""Benchmark of the fibre controller: the cost of one cycle, and the treatments it gives.

1. One 4-fibre controller step (4 TEMPERATURE loops: PID, limits, rate limit, anti-windup), the
   compiled kernel (cython_ext/fibre_control.pyx) against four simple-pid objects (goal: >= 10x
   faster) and against its pure-Python twin; also with the 4 tip limiters (8 loops), the whole
   per-cycle controller (controller/control.py, snapshots in, Proposal out), and one SHAPED
   planner solve compiled against its twin. Best of REPEATS timeit runs, all ratios in one run.
2. Treatment quality on every shipped tissue scenario, FIXED_POWER at 3 W, TEMPERATURE and SHAPED
   side by side, closed loop in-process (tests/control_rig.py: the tissue model, the FT-8's lag and
   noise, the real safety layer): time to complete (every margin probe at the lethal dose), energy,
   % of tumour plus margin coagulated, maximum protected temperature and CEM43, maximum tip
   temperature (the tip probes' readings, which the cap applies to, and the tissue at the tip).

Prints tables and writes bench/results/bench_control.json.

    python bench/bench_control.py [--quick] [--skip-treatments] [--seconds S]

--skip-treatments measures the step only and keeps the treatment table of the last full run.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bench_control.json"
REPEATS = 7
GOAL_OVER_SIMPLE_PID = 10.0
SCENARIOS = ("single_fibre", "tumour_20mm_2fibres", "tumour_35mm_4fibres", "vessel_protected_4fibres")
# Not shipped: the tests' patient where a structure to spare lies 8 mm beyond one fibre (the shipped
# scenarios never bring heat to their protected probe within the treatment).
EXTRA_SCENARIOS = (str(ROOT / "tests" / "scenarios" / "protected_near_2fibres.toml"),)
MODES = ("FIXED_POWER", "TEMPERATURE", "SHAPED")
TREATMENT_S = 3600.0  # the plans' session limit, where SESSION_LIMIT_S does not say otherwise; a run is cut there
# Multi-position treatments of a whole tumour get a 2 h session (clinically, multi-position LITT
# sessions last 60-120 min): under the 95 degC tip cap a bare fibre takes about 1000 s per 1800 J
# position, so 3-4 positions do not fit in 1 h in any mode. Every mode gets the same limit.
SESSION_LIMIT_S = {"tumour_20mm_2fibres": 7200.0, "tumour_35mm_4fibres": 7200.0, "vessel_protected_4fibres": 7200.0}


def session_limit_s(scenario: str) -> float:
    return SESSION_LIMIT_S.get(Path(scenario).stem, TREATMENT_S)
FIXED_POWER_W = 3.0
FIBRE_BUDGET_J = 1800.0  # the issue's 1200-1800 J
TEMPERATURE_TARGET_C = 85.0  # the issue's 80-90 degC, outside the safety layer's back-off band
TIP_CAP_C = 95.0
PROTECTED_MAX_C = 45.0
PROTECTED_MAX_CEM43_MIN = 60.0
LETHAL_CEM43_MIN = 240.0
KP, TI_S = 1.0, 27.0


# --- 1. one controller step -----------------------------------------------------------------------


def _best(stmt, number: int) -> float:  # noqa: ANN001
    timeit.timeit(stmt, number=number)  # warm up: caches, branch predictors, the CPU's clock
    return min(timeit.repeat(stmt, number=number, repeat=REPEATS)) / number


def bench_step() -> dict[str, float]:
    import cython_ext.fibre_control as compiled
    from cython_ext import fibre_control_ref as reference
    from simple_pid import PID

    dt = 0.1
    measured = (78.3, 79.1, 80.6, 81.2, 40.0, 39.5, 39.0, 38.0)
    applied = (1.5, 1.6, 1.4, 1.5)

    def make(impl, n_loops):  # noqa: ANN001, ANN202
        k = impl.FibreLoops(4, n_loops)
        for i in range(4):
            k.set_channel(i, 10.0, 2.0, math.inf)
            k.set_loop(i, i, i, KP, KP / TI_S, KP * 0.1, 0.5, 1.0 / TI_S, math.inf, 0.0)
            k.set_target(i, 80.0)
            if n_loops == 8:
                k.set_loop(4 + i, i, i, KP, KP / TI_S, 0.0, 0.5, 1.0 / TI_S, math.inf, 0.0)
                k.set_target(4 + i, 89.5)
            k.set_request(i, 10.0)
            k.set_mode(i, impl.LOOPS, 1.5)
        return k

    fast4, slow4, fast8 = make(compiled, 4), make(reference, 4), make(compiled, 8)
    pids = [PID(KP, KP / TI_S, KP * 0.1, setpoint=80.0, sample_time=None, output_limits=(0.0, 10.0)) for _ in range(4)]

    def simple_pid_step() -> list[float]:
        return [pid(m, dt=dt) for pid, m in zip(pids, measured)]

    out: dict[str, float] = {}
    out["compiled_us"] = _best(lambda: fast4.step(dt, measured, applied), 200_000) * 1e6
    out["compiled_8_loops_us"] = _best(lambda: fast8.step(dt, measured, applied), 200_000) * 1e6
    out["reference_us"] = _best(lambda: slow4.step(dt, measured, applied), 20_000) * 1e6
    out["simple_pid_us"] = _best(simple_pid_step, 50_000) * 1e6
    out["controller_cycle_us"] = _bench_controller_cycle() * 1e6
    solve = _bench_mpc_solve()
    out.update(solve)
    out["over_simple_pid"] = out["simple_pid_us"] / out["compiled_us"]
    out["over_reference"] = out["reference_us"] / out["compiled_us"]
    out["mpc_over_reference"] = out["mpc_reference_ms"] / out["mpc_compiled_ms"]
    return out


def _bench_controller_cycle() -> float:
    """The whole per-cycle controller: snapshots in, Proposal out (4 TEMPERATURE fibres + limiters)."""
    from dataclasses import replace

    from control_rig import config
    from controller.control import FibreController
    from controller.plan import load_plan
    from protocol import ft8 as FT8
    from protocol import ls4 as LS4
    from sim.world import SimWorld
    from test_control_step import four_fibre_plan

    plan = load_plan(four_fibre_plan(80.0), limits=config(ROOT).limits)
    ctl = FibreController(plan=plan)
    world = SimWorld()
    ls4 = LS4.LS4Snapshot.from_words(world.ls4.input_words())
    ls4 = replace(ls4, device_state=LS4.DeviceState.EMITTING, active_setpoint_mw=(1500, 1500, 1500, 1500), output_power_mw=(1500, 1500, 1500, 1500))
    ft8 = FT8.FT8Snapshot.from_words(world.ft8.input_words())
    clock = [0.0]

    def one() -> None:
        clock[0] += 0.1
        ctl.step(now_s=clock[0], ls4=ls4, ft8=ft8)

    return _best(one, 20_000)


def _bench_mpc_solve() -> dict[str, float]:
    import cython_ext.fibre_control as compiled
    from cython_ext import fibre_control_ref as reference
    from controller.control import MPC_BLOCKS_S, MPC_ITERATIONS, MPC_POINTS_S

    rng = np.random.default_rng(0)
    n_f, n_p = 4, 8
    n_rows, n_vars = n_p * len(MPC_POINTS_S), n_f * len(MPC_BLOCKS_S)
    a = np.ascontiguousarray(rng.uniform(0, 5, size=(n_rows, n_vars)))
    args = [rng.uniform(37, 90, n_rows), np.full(n_rows, 52.0), rng.uniform(0, 1, n_rows), np.full(n_rows, 89.0), rng.uniform(0, 30, n_rows), np.zeros(n_vars), np.full(n_vars, 10.0), np.full(n_vars, 0.01), np.full(n_vars, 0.1), np.zeros(n_vars), np.full(len(MPC_BLOCKS_S), 20.0)]
    fast = compiled.ShapedMpc(n_rows, n_vars, n_f)
    fast.set_matrix(a)
    slow = reference.ShapedMpc(n_rows, n_vars, n_f)
    slow.set_matrix(a.tolist())
    x = np.zeros(n_vars)
    largs = [list(v) for v in args]
    t_fast = _best(lambda: fast.solve(*args, MPC_ITERATIONS, x.copy()), 200)
    t_slow = min(timeit.repeat(lambda: slow.solve(*largs, MPC_ITERATIONS, [0.0] * n_vars), number=1, repeat=2))
    return {"mpc_compiled_ms": t_fast * 1e3, "mpc_reference_ms": t_slow * 1e3, "mpc_rows": n_rows, "mpc_vars": n_vars, "mpc_iterations": MPC_ITERATIONS}


# --- 2. treatments --------------------------------------------------------------------------------------


def plan_text(scenario: str, mode: str) -> str:
    from sim.tissue import load_scenario

    sc = load_scenario(scenario)
    fibres = [f.channel for f in sc.fibres]
    tips: dict[int, int] = {}
    for p in sc.probes:
        if p.role == "tip":
            near = min(sc.fibres, key=lambda f: sum((a - b) ** 2 for a, b in zip(p.position_mm, f.tip_mm)))
            tips.setdefault(near.channel, p.channel)
    out = [
        "[session]",
        f"max_session_energy_j = {FIBRE_BUDGET_J * len(fibres) * sc.illuminations:g}",
        f"illuminations = {sc.illuminations}",
        f"max_duration_s = {session_limit_s(scenario):.0f}",
        f"tip_temp_cap_c = {TIP_CAP_C:g}",
        'endpoint = "either"',
    ]
    for f in fibres:
        out += ["[[fibres]]", f"channel = {f}", f'mode = "{mode}"', f"energy_budget_j = {FIBRE_BUDGET_J:g}"]
        if mode == "FIXED_POWER":
            out += [f"power_w = {FIXED_POWER_W:g}"]
        elif mode == "TEMPERATURE":
            out += [f"target_temp_c = {TEMPERATURE_TARGET_C:g}", f"control_probe = {tips[f]}"]
    for p in sc.probes:
        out += ["[[probes]]", f"channel = {p.channel}", f'role = "{p.role}"']
        if p.role == "tip":
            near = min(sc.fibres, key=lambda f: sum((a - b) ** 2 for a, b in zip(p.position_mm, f.tip_mm)))
            out += [f"fibre = {near.channel}"]
        elif p.role == "protected":
            out += [f"max_temp_c = {PROTECTED_MAX_C:g}", f"max_cem43_min = {PROTECTED_MAX_CEM43_MIN:g}"]
        elif p.role == "margin":
            out += [f"lethal_cem43_min = {LETHAL_CEM43_MIN:g}"]
    return "\n".join(out) + "\n"


def run_treatment(job: tuple[str, str, float]) -> dict[str, object]:
    from control_rig import Rig
    from controller.session_states import State
    from sim.tissue.metrics import ablation_result

    scenario, mode, seconds = job
    started = time.perf_counter()
    rig = Rig(scenario, plan_text(scenario, mode), max_session_s=int(max(session_limit_s(scenario), TREATMENT_S)))
    try:
        session = rig.load()
        rig.arm_and_press()
        t0 = rig.world.time_s
        margins = [p.channel for p in rig.plan.probes if p.role.value == "margin"]
        lethal_at: float | None = None
        energy_j = 0.0
        pullback_mm = rig.thermal.scenario.pullback_mm
        while rig.world.time_s - t0 < seconds - 1e-9 and session.open:
            if session.state is State.PULLBACK:
                rig.pull_back(pullback_mm)
            rig.cycle()
            if rig.supervisor.in_session:
                energy_j = sum(rig.supervisor.delivered_j)  # the safety layer's books (gone once the session ends)
            if lethal_at is None and margins and all(session.cem43_min(p) >= LETHAL_CEM43_MIN for p in margins):
                lethal_at = rig.world.time_s - t0
        elapsed = rig.world.time_s - t0
        result = ablation_result(rig.thermal, powers_w={}, seconds=max(elapsed, 1e-9))
        tips = [p.channel for p in rig.plan.probes if p.role.value == "tip"]
        protected = [p.channel for p in rig.plan.probes if p.role.value == "protected"]
        readings = rig.trace.measured_c
        trip = rig.supervisor.latched
        prot = result.protected[0] if result.protected else None
        return {
            "scenario": Path(scenario).stem,
            "mode": mode,
            "seconds_run": round(elapsed, 1),
            "positions": f"{session.illumination + 1}/{rig.plan.illuminations}",
            "end": session.end_reason or ("trip" if trip else f"cut at {seconds:g} s"),
            "trip": None if trip is None else trip.rule,
            "margins_lethal_s": None if lethal_at is None else round(lethal_at, 1),
            "energy_j": round(energy_j, 1),
            "tissue_energy_j": round(result.energy_j, 1),
            "target_coagulated_pct": None if result.tumour is None else round(100.0 * result.tumour.target_coagulated_fraction, 1),
            "coagulated_ml": round(result.coagulated_volume_ml, 2),
            "protected_max_c": None if prot is None else round(prot.max_temp_c or math.nan, 2),
            "protected_max_cem43_min": None if prot is None else round(prot.max_cem43_min or 0.0, 2),
            "protected_probe_max_c": None if not protected else round(max(r[protected[0]] for r in readings if r[protected[0]] is not None), 2),
            "tip_probe_max_c": round(max(r[p] for r in readings for p in tips if r[p] is not None), 2),
            "tip_tissue_max_c": round(result.max_tip_temp_c, 1),
            "soft_findings": sorted({f.rule for f in rig.findings if f.severity.value == "soft"}),
            "wall_s": round(time.perf_counter() - started, 1),
        }
    finally:
        rig.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="treatments cut at 240 s instead of at the session limit")
    p.add_argument("--seconds", type=float, default=None, help="treatment length cap, s")
    p.add_argument("--skip-treatments", action="store_true")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    step = bench_step()
    print(f"one 4-fibre controller step (best of {REPEATS}), load {load_before[0]:.2f}")
    rows = [
        ("compiled kernel, 4 loops", step["compiled_us"], 1.0),
        ("4 x simple-pid", step["simple_pid_us"], step["over_simple_pid"]),
        ("reference twin, 4 loops", step["reference_us"], step["over_reference"]),
        ("compiled kernel, 8 loops (with tip limiters)", step["compiled_8_loops_us"], step["compiled_8_loops_us"] / step["compiled_us"]),
        ("whole controller cycle (Python layer + kernel)", step["controller_cycle_us"], step["controller_cycle_us"] / step["compiled_us"]),
    ]
    print(f"{'':<48} {'us/step':>9} {'x compiled':>11}")
    for name, us, ratio in rows:
        print(f"{name:<48} {us:>9.2f} {ratio:>10.1f}x")
    print(f"SHAPED solve ({step['mpc_rows']} rows x {step['mpc_vars']} powers, {step['mpc_iterations']} iterations): compiled {step['mpc_compiled_ms']:.2f} ms, reference {step['mpc_reference_ms']:.0f} ms ({step['mpc_over_reference']:.0f}x)")
    met = step["over_simple_pid"] >= GOAL_OVER_SIMPLE_PID
    print(f"goal compiled >= {GOAL_OVER_SIMPLE_PID:g}x four simple-pid: {step['over_simple_pid']:.1f}x {'met' if met else 'NOT met'}")

    treatments: list[dict[str, object]] = []
    if args.skip_treatments and RESULTS.exists():  # keep the last treatment table
        treatments = json.loads(RESULTS.read_text()).get("treatments", [])
    if not args.skip_treatments:
        cap = args.seconds or (240.0 if args.quick else None)
        jobs = [(sc, mode, cap or session_limit_s(sc)) for sc in SCENARIOS + EXTRA_SCENARIOS for mode in MODES]
        seconds = cap or max(session_limit_s(sc) for sc in SCENARIOS)
        t0 = time.perf_counter()
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            treatments = pool.map(run_treatment, jobs, chunksize=1)
        print(f"\ntreatments (cap {seconds:g} s, tip cap {TIP_CAP_C:g} degC, protected {PROTECTED_MAX_C:g} degC / {PROTECTED_MAX_CEM43_MIN:g} min, fibre budget {FIBRE_BUDGET_J:g} J; {time.perf_counter() - t0:.0f} s wall)")
        head = (
            f"{'scenario':<26} {'mode':<12} {'end':<22} {'pos':>4} {'time s':>6} {'lethal s':>8} {'energy J':>9} {'target %':>8} {'coag ml':>7} "
            f"{'prot C':>7} {'prot CEM':>8} {'prot probe':>10} {'tip C':>6} {'tip tissue':>10}  soft findings"
        )
        print(head)
        print("-" * len(head))
        for r in treatments:
            fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
            print(
                f"{r['scenario']:<26} {r['mode']:<12} {str(r['end'])[:22]:<22} {r['positions']:>4} {r['seconds_run']:>6.0f} {fmt(r['margins_lethal_s'], '.0f'):>8} {fmt(r['energy_j'], '.0f'):>9} "
                f"{fmt(r['target_coagulated_pct'], '.1f'):>8} {fmt(r['coagulated_ml'], '.2f'):>7} {fmt(r['protected_max_c'], '.1f'):>7} "
                f"{fmt(r['protected_max_cem43_min'], '.1f'):>8} {fmt(r['protected_probe_max_c'], '.1f'):>10} {fmt(r['tip_probe_max_c'], '.1f'):>6} "
                f"{fmt(r['tip_tissue_max_c'], '.0f'):>10}  {','.join(r['soft_findings']) or '-'}"  # type: ignore[arg-type]
            )
        shaped_goal = [r for r in treatments if r["mode"] == "SHAPED" and r["target_coagulated_pct"] is not None]
        print("(protected_near_2fibres is the tests' scenario, not shipped: a protected probe 8 mm beyond fibre 0)")
        ok = [r for r in shaped_goal if r["target_coagulated_pct"] >= 99.0 and r["trip"] is None]  # type: ignore[operator]
        print(f"goal SHAPED >= 99 % of tumour + margin without a trip: met in {len(ok)} of {len(shaped_goal)} tumour scenarios")
    load_after = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "control",
                "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "load_before": load_before, "load_after": load_after},
                "step": step,
                "goals": {"over_simple_pid": {"value": step["over_simple_pid"], "needed": GOAL_OVER_SIMPLE_PID, "met": met}},
                "treatment_settings": {
                    "fixed_power_w": FIXED_POWER_W,
                    "fibre_budget_j": FIBRE_BUDGET_J,
                    "temperature_target_c": TEMPERATURE_TARGET_C,
                    "tip_cap_c": TIP_CAP_C,
                    "protected_max_c": PROTECTED_MAX_C,
                    "protected_max_cem43_min": PROTECTED_MAX_CEM43_MIN,
                    "lethal_cem43_min": LETHAL_CEM43_MIN,
                },
                "treatments": treatments,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
