"""The report's figures, as PNG files, with matplotlib's Agg backend (no display, no network).

Every figure shares one time axis (treatment time, controller/report_model.py) and shades the
intervals in which the laser was emitting, so the figures line up with each other and with the
timeline of events.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")  # before pyplot: never a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .report_model import CATEGORIES, Model, category  # noqa: E402

WIDTH_IN: Final = 10.0
DPI: Final = 100
MINUTES_AFTER_S: Final = 900.0  # longer sessions are plotted in minutes
LATE_EVENT_GAP_S: Final = 300.0  # an event this long after the last sample (a recovery at the next start) is left off the axis
EMISSION_COLOR: Final = "#f5a623"
STATE_COLORS: Final = {
    "LOADED": "#c9c9c9",
    "ARMED": "#7fa7d9",
    "EMITTING": EMISSION_COLOR,
    "PAUSED": "#f2d16b",
    "PULLBACK": "#b38fd1",
    "COMPLETE": "#5cb85c",
    "ABORTED": "#8c8c8c",
    "FAULTED": "#d9534f",
    "INTERRUPTED": "#d9534f",
}
CATEGORY_STYLE: Final = {
    "state change": ("|", "#444444"),
    "pause": ("v", "#c79a00"),
    "pull-back": ("D", "#7b4fa6"),
    "safety trip": ("X", "#d62728"),
    "soft limit": ("^", "#ff7f0e"),
    "other": ("o", "#1f77b4"),
}


def _color(index: int) -> Any:
    return plt.get_cmap("tab10")(index % 10)


class Axis:
    """The shared time axis: its end, its unit, and which events fall on it."""

    def __init__(self, model: Model) -> None:
        last_sample = model.sample_t[-1] if model.sample_t else 0.0
        on_axis = [t for t in model.event_t if t <= max(last_sample, 0.0) + LATE_EVENT_GAP_S]
        self.end_s = max([last_sample, 1.0, *on_axis])
        self.late_events = len(model.event_t) - len(on_axis)
        self.minutes = self.end_s > MINUTES_AFTER_S
        self.div = 60.0 if self.minutes else 1.0
        self.label = f"treatment time since the plan was loaded ({'min' if self.minutes else 's'})"

    def x(self, t_s: float) -> float:
        return t_s / self.div

    def setup(self, ax: Any, model: Model, *, shade: bool = True) -> None:
        ax.set_xlim(0.0, self.x(self.end_s) * 1.01)
        ax.grid(True, alpha=0.3)
        for start, end, state in model.states if shade else ():
            if state == "EMITTING":
                ax.axvspan(self.x(start), self.x(min(end, self.end_s)), color=EMISSION_COLOR, alpha=0.13, lw=0)


def _figure(rows: int, row_in: float, *, left: float = 0.12) -> tuple[Any, list[Any]]:
    """A column of `rows` axes sharing x, with the same room on the right for every legend (so
    that the axes line up); margins in inches, whatever the height."""
    top_in, bottom_in, gap_in = 0.4, 0.55, 0.55
    height = top_in + bottom_in + rows * row_in + (rows - 1) * gap_in
    fig, axes = plt.subplots(rows, 1, figsize=(WIDTH_IN, height), sharex=True, squeeze=False)
    fig.subplots_adjust(left=left, right=0.72, top=1 - top_in / height, bottom=bottom_in / height, hspace=gap_in / row_in)
    return fig, list(axes[:, 0])


def _legend(ax: Any, *, emission: bool = True) -> None:
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*handles, _emission_handle()] if emission else handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)


def _emission_handle() -> Patch:
    return Patch(facecolor=EMISSION_COLOR, alpha=0.3, label="laser emitting")


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)


def _series(model: Model, key: str, index: int, scale: float = 1.0) -> tuple[list[float], list[float | None]]:
    xs, ys = [], []
    for t, s in zip(model.sample_t, model.samples, strict=True):
        v = s[key][index]
        xs.append(t)
        ys.append(None if v is None else v * scale)
    return xs, ys


def _plot(ax: Any, axis: Axis, xs: list[float], ys: list[float | None], **kw: Any) -> None:
    ax.plot([axis.x(x) for x in xs], [float("nan") if y is None else y for y in ys], **kw)


def _width(rank: int, count: int, base: float = 1.4) -> float:
    """Earlier series a little wider, so that one drawn exactly over another still shows at its edges."""
    return base + 0.8 * (count - 1 - rank)


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#666666")


def power_energy(model: Model, axis: Axis, path: Path) -> None:
    fig, (top, bottom) = _figure(2, 2.6)
    for ax in (top, bottom):
        axis.setup(ax, model)
    for rank, f in enumerate(model.fibres):
        c = f.channel
        name = f"fibre {c}" + (f" ({f.label})" if f.label else "")
        xs, out = _series(model, "output_mw", c, 1e-3)
        _, cmd = _series(model, "setpoint_mw", c, 1e-3)
        _plot(top, axis, xs, cmd, color=_color(c), ls="--", lw=1.0, drawstyle="steps-post", label=f"{name} commanded")
        _plot(top, axis, xs, out, color=_color(c), lw=_width(rank, len(model.fibres)), label=f"{name} measured")
        _, energy = _series(model, "energy_j", c)
        _plot(bottom, axis, xs, energy, color=_color(c), lw=_width(rank, len(model.fibres)), label=f"{name} delivered")
        if f.budget_j is not None and model.illuminations:
            bottom.axhline(f.budget_j * model.illuminations, color=_color(c), ls=":", lw=1.2, label=f"{name} planned {f.budget_j * model.illuminations:g} J")
    if not model.samples:
        _no_data(top, "no samples recorded")
    top.set_title(f"Power per fibre, commanded (setpoint) and measured (LS-4 output) — session {model.session['id']}")
    top.set_ylabel("power (W)")
    top.set_ylim(bottom=0)
    bottom.set_title("Energy delivered per fibre (the session's share of the LS-4 counters)")
    bottom.set_ylabel("energy (J)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel(axis.label)
    for ax in (top, bottom):
        _legend(ax)
    _save(fig, path)


def temperatures(model: Model, axis: Axis, path: Path) -> None:
    tips = [p for p in model.probes if p.role == "tip"]
    others = [p for p in model.probes if p.role != "tip"]
    groups = [(g, title) for g, title in ((tips, "Tip probes against the tip temperature cap"), (others, "Protected and margin probes against their limits")) if g]
    if not groups:
        groups = [([], "Probe temperatures")]
    fig, axes = _figure(len(groups), 2.6)
    for ax, (probes, title) in zip(axes, groups, strict=True):
        axis.setup(ax, model)
        limits_drawn: set[float] = set()
        for rank, p in enumerate(probes):
            xs, ys = _series(model, "temperature_c", p.channel)
            _plot(ax, axis, xs, ys, color=_color(p.channel), lw=_width(rank, len(probes)), label=p.name)
            if p.max_temp_c is not None and p.role == "protected":
                ax.axhline(p.max_temp_c, color=_color(p.channel), ls="--", lw=1.3, label=f"probe {p.channel} limit {p.max_temp_c:g} °C")
            elif p.max_temp_c is not None and p.role == "tip" and p.max_temp_c not in limits_drawn:
                limits_drawn.add(p.max_temp_c)
                ax.axhline(p.max_temp_c, color="#d62728", ls="--", lw=1.5, label=f"tip cap {p.max_temp_c:g} °C")
        if not probes:
            _no_data(ax, "no probes in the plan")
        ax.set_title(title)
        ax.set_ylabel("temperature (°C)")
        _legend(ax)
    axes[-1].set_xlabel(axis.label)
    _save(fig, path)


def cem43(model: Model, axis: Axis, path: Path) -> bool:
    """CEM43 at protected probes (against their limits) and margin probes (against the lethal dose).
    False, and no file, when the plan has neither."""
    protected = [p for p in model.probes if p.role == "protected"]
    margins = [p for p in model.probes if p.role == "margin"]
    groups = [(g, t) for g, t in ((protected, "CEM43 at protected probes (must stay below their limits)"), (margins, "CEM43 at margin probes (the endpoint: reach the lethal dose)")) if g]
    if not groups:
        return False
    fig, axes = _figure(len(groups), 2.6)
    for ax, (probes, title) in zip(axes, groups, strict=True):
        axis.setup(ax, model)
        for rank, p in enumerate(probes):
            xs, ys = _series(model, "cem43_min", p.channel)
            _plot(ax, axis, xs, ys, color=_color(p.channel), lw=_width(rank, len(probes)), label=p.name)
            if p.role == "protected" and p.max_cem43_min is not None:
                ax.axhline(p.max_cem43_min, color=_color(p.channel), ls="--", lw=1.3, label=f"probe {p.channel} limit {p.max_cem43_min:g} min")
            if p.role == "margin" and p.lethal_cem43_min is not None:
                ax.axhline(p.lethal_cem43_min, color=_color(p.channel), ls=":", lw=1.3, label=f"probe {p.channel} lethal {p.lethal_cem43_min:g} min")
        if probes is margins:
            ax.set_yscale("symlog", linthresh=1.0)
            ax.set_ylabel("CEM43 (min, log above 1)")
        else:
            ax.set_ylabel("CEM43 (min)")
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        _legend(ax)
    axes[-1].set_xlabel(axis.label)
    _save(fig, path)
    return True


def timeline(model: Model, axis: Axis, path: Path) -> None:
    """The session's states as a band, and its events by category, on the shared time axis."""
    rows = ["state", *CATEGORIES]
    fig, (ax,) = _figure(1, 2.7)
    axis.setup(ax, model, shade=False)  # the state band says when the laser was emitting
    y = {name: len(rows) - 1 - i for i, name in enumerate(rows)}
    seen_states = []
    for start, end, state in model.states:
        if start > axis.end_s:
            continue
        width = max(axis.x(min(end, axis.end_s)) - axis.x(start), axis.x(axis.end_s) * 0.003)
        ax.broken_barh([(axis.x(start), width)], (y["state"] - 0.35, 0.7), facecolors=STATE_COLORS.get(state, "#999999"), edgecolor="white", lw=0.5)
        if state not in seen_states:
            seen_states.append(state)
    for t, e in zip(model.event_t, model.events, strict=True):
        if t > axis.end_s:
            continue
        cat = category(e)
        marker, color = CATEGORY_STYLE[cat]
        ax.plot([axis.x(t)], [y[cat]], marker=marker, color=color, ms=9 if cat in ("safety trip", "pull-back") else 7, ls="none")
        if cat == "safety trip":
            ax.annotate((e["message"] or e["kind"])[:48], (axis.x(t), y[cat]), xytext=(6, 6), textcoords="offset points", fontsize=7, color=color)
        elif cat == "pull-back":
            ax.annotate(f"#{e['id']}", (axis.x(t), y[cat]), xytext=(5, 5), textcoords="offset points", fontsize=7, color=color)
    ax.set_yticks([y[r] for r in rows], rows)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    title = "Session timeline: states and events"
    if axis.late_events:
        title += f" ({axis.late_events} later event(s) off the axis, see the table)"
    ax.set_title(title)
    ax.set_xlabel(axis.label)
    handles = [Patch(facecolor=STATE_COLORS.get(s, "#999999"), label=s) for s in seen_states]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="state", title_fontsize=8, borderaxespad=0.0)
    _save(fig, path)


FIGURES: Final[tuple[tuple[str, str, Callable[..., Any]], ...]] = (
    ("power_energy.png", "power and energy per fibre", power_energy),
    ("temperatures.png", "probe temperatures against their limits", temperatures),
    ("cem43.png", "CEM43 at protected and margin probes", cem43),
    ("timeline.png", "session events on the time axis", timeline),
)

