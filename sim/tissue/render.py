"""The treatment-report image: peak temperature and damage in the fibre plane and across the tips.

Four panels: rows are the plane along the fibres (through the fibres' centroid, along their main
spread) and the plane across them at the light sources; columns are peak temperature and
log10 Omega. Overlays: the Omega = 1 boundary, tumour and tumour+margin circles, vessels,
protected structures, fibres and probes. Written with numpy and zlib only.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .font import GLYPH_H, draw_text, text_width
from .grid import cross, perpendicular, unit
from .metrics import AblationResult
from .model import TissueModel

PANEL_PX = 240
PAD_PX = 12
TEMP_RANGE_C = (37.0, 100.0)
LOG_OMEGA_RANGE = (-3.0, 3.0)
NEAR_PLANE_MM = 1.5  # fibres and probes closer than this to a plane are drawn in it

BACKGROUND = (24, 24, 28)
OUTSIDE = (48, 48, 52)
TEXT = (230, 230, 230)
CONTOUR = (255, 255, 255)
TUMOUR = (80, 220, 255)
VESSEL = (120, 140, 200)
PROTECTED = (90, 230, 110)
FIBRE = (255, 255, 255)
PROBE = (255, 120, 220)

# inferno-like anchors for temperature, and a blue -> yellow -> red ramp for log10 Omega
_TEMP_ANCHORS = [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21), (250, 193, 39), (252, 255, 164)]
_DAMAGE_ANCHORS = [(35, 40, 70), (50, 80, 140), (90, 150, 200), (240, 210, 80), (235, 120, 40), (200, 40, 30), (120, 10, 20)]


def _colormap(values: np.ndarray, lo: float, hi: float, anchors: list[tuple[int, int, int]]) -> np.ndarray:
    x = np.clip((values - lo) / (hi - lo), 0.0, 1.0) * (len(anchors) - 1)
    i = np.minimum(np.floor(x).astype(int), len(anchors) - 2)
    f = (x - i)[..., None]
    a = np.asarray(anchors, dtype=float)
    return (a[i] * (1 - f) + a[i + 1] * f).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an (h, w, 3) uint8 RGB image as PNG."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


# --- planes -------------------------------------------------------------------------------------------


def report_planes(model: TissueModel) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{"fibre plane": (origin, horizontal, vertical), "across tips": (...)}, unit vectors in mm space."""
    dirs = np.asarray([f.spec.direction for f in model.fibres])
    d = dirs.sum(axis=0)
    d = np.asarray(unit(d)) if np.linalg.norm(d) > 1e-6 else dirs[0]
    sources = np.asarray([f.source_mm for f in model.fibres])
    origin = sources.mean(axis=0)
    spread = sources - origin
    spread = spread - np.outer(spread @ d, d)  # perpendicular to the fibres
    horizontal = None
    if len(sources) >= 2 and np.linalg.norm(spread) > 1e-6:
        w, v = np.linalg.eigh(spread.T @ spread)
        if w[-1] > 1.25 * w[-2]:
            horizontal = v[:, -1]
        else:  # symmetric arrangement (a square): the plane through the first fibre and the centre
            horizontal = spread[0] / np.linalg.norm(spread[0])
    elif model.scenario.vessels:
        v0 = model.scenario.vessels[0]
        to_vessel = np.asarray(v0.point_mm) - origin
        axis = np.asarray(v0.direction)
        to_vessel = to_vessel - (to_vessel @ axis) * axis
        to_vessel = to_vessel - (to_vessel @ d) * d
        if np.linalg.norm(to_vessel) > 1e-6:
            horizontal = to_vessel / np.linalg.norm(to_vessel)
    if horizontal is None:
        horizontal = np.asarray(perpendicular(tuple(d)))
    if horizontal[np.argmax(np.abs(horizontal))] < 0:
        horizontal = -horizontal
    # across the fibres, keep the grid's axes on screen when the fibres run along one of them
    across_h = horizontal
    if np.max(np.abs(d)) > 1.0 - 1e-9:
        axes = [np.eye(3)[a] for a in range(3) if abs(d[a]) < 1e-9]
        across_h = max(axes, key=lambda e: abs(e @ horizontal))
    across_v = np.asarray(cross(d, across_h))
    return {"fibre plane": (origin, horizontal, d), "across tips": (origin, across_h, across_v)}


def _plane_points(model: TissueModel, origin: np.ndarray, eh: np.ndarray, ev: np.ndarray) -> tuple[np.ndarray, float]:
    extent = max(model.grid.size_mm)
    mm_per_px = extent / PANEL_PX
    c = (np.arange(PANEL_PX) + 0.5 - PANEL_PX / 2) * mm_per_px
    s, t = np.meshgrid(c, c, indexing="xy")  # s: columns (horizontal), t: rows (down = +ev)
    pts = origin + s[..., None] * eh + t[..., None] * ev
    return pts, mm_per_px


def _to_px(point: Any, origin: np.ndarray, eh: np.ndarray, ev: np.ndarray, mm_per_px: float) -> tuple[float, float, float]:
    rel = np.asarray(point, dtype=float) - origin
    normal = np.cross(eh, ev)
    return (rel @ eh) / mm_per_px + PANEL_PX / 2, (rel @ ev) / mm_per_px + PANEL_PX / 2, float(rel @ normal)


def _outline(mask: np.ndarray) -> np.ndarray:
    edge = np.zeros_like(mask)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    return edge


def _put(panel: np.ndarray, x: float, y: float, color: tuple[int, int, int], r: int = 1) -> None:
    xi, yi = int(round(x)), int(round(y))
    panel[max(0, yi - r) : max(0, yi + r + 1), max(0, xi - r) : max(0, xi + r + 1)] = color


def _line(panel: np.ndarray, x0: float, y0: float, x1: float, y1: float, color: tuple[int, int, int]) -> None:
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.round(np.linspace(x0, x1, n)).astype(int)
    ys = np.round(np.linspace(y0, y1, n)).astype(int)
    ok = (xs >= 0) & (xs < PANEL_PX) & (ys >= 0) & (ys < PANEL_PX)
    panel[ys[ok], xs[ok]] = color


def _panels(model: TissueModel, plane: tuple[np.ndarray, np.ndarray, np.ndarray], fibre_plane: bool) -> tuple[np.ndarray, np.ndarray]:
    origin, eh, ev = plane
    grid = model.grid
    pts, mpp = _plane_points(model, origin, eh, ev)
    flat = pts.reshape(-1, 3)
    lo, hi = np.asarray(grid.lo_mm), np.asarray(grid.hi_mm)
    inside = np.all((flat >= lo) & (flat <= hi), axis=1).reshape(PANEL_PX, PANEL_PX)
    peak = np.maximum(model.peak_temp_c, model.temperature_c)
    temp = grid.sample(peak, flat).reshape(PANEL_PX, PANEL_PX)
    with np.errstate(divide="ignore"):
        logw = np.maximum(np.log10(model.omega), -12.0)
    dmg = grid.sample(logw, flat).reshape(PANEL_PX, PANEL_PX)
    vessel = grid.sample(model.vessel_mask.astype(float), flat).reshape(PANEL_PX, PANEL_PX) > 0.5
    panels = (_colormap(temp, *TEMP_RANGE_C, _TEMP_ANCHORS), _colormap(dmg, *LOG_OMEGA_RANGE, _DAMAGE_ANCHORS))
    coag_edge = _outline((dmg >= 0.0) & inside)
    sc = model.scenario
    circles = []
    if sc.tumour is not None:
        _, _, off = _to_px(sc.tumour.center_mm, origin, eh, ev, mpp)
        cx, cy, _ = _to_px(sc.tumour.center_mm, origin, eh, ev, mpp)
        for radius, dashed in ((sc.tumour.radius_mm, False), (sc.tumour.target_radius_mm, True)):
            if radius > abs(off):
                circles.append((cx, cy, math.sqrt(radius**2 - off**2) / mpp, dashed))
    yy, xx = np.mgrid[0:PANEL_PX, 0:PANEL_PX]
    for panel in panels:
        panel[vessel] = VESSEL
        for s in sc.protected:
            m = grid.sample(s.mask(grid).astype(float), flat).reshape(PANEL_PX, PANEL_PX) > 0.5
            panel[_outline(m)] = PROTECTED
        panel[coag_edge] = CONTOUR
        for cx, cy, r, dashed in circles:
            ring = np.abs(np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) - r) < 0.7
            if dashed:
                ring &= (np.floor(np.degrees(np.arctan2(yy + 0.5 - cy, xx + 0.5 - cx)) / 6) % 2) == 0
            panel[ring] = TUMOUR
        for f in model.fibres:
            tx, ty, off = _to_px(f.spec.tip_mm, origin, eh, ev, mpp)
            if abs(off) > NEAR_PLANE_MM:
                continue
            if fibre_plane:
                bx, by, _ = _to_px(np.asarray(f.spec.tip_mm) - 200.0 * np.asarray(f.spec.direction), origin, eh, ev, mpp)
                _line(panel, tx, ty, bx, by, FIBRE)
            _put(panel, tx, ty, FIBRE, 2)
        for p in sc.probes:
            px, py, off = _to_px(p.position_mm, origin, eh, ev, mpp)
            if abs(off) <= NEAR_PLANE_MM and 0 <= px < PANEL_PX and 0 <= py < PANEL_PX:
                _put(panel, px, py, PROBE, 1)
                draw_text(panel, int(px) + 3, int(py) - 3, str(p.channel), PROBE)
        panel[~inside] = OUTSIDE
        # 10 mm scale bar, bottom left
        bar = int(round(10.0 / mpp))
        panel[PANEL_PX - 8 : PANEL_PX - 6, 6 : 6 + bar] = TEXT
        draw_text(panel, 8 + bar, PANEL_PX - 11, "10 MM", TEXT)
    return panels


def _colorbar(width: int, lo: float, hi: float, anchors: list[tuple[int, int, int]], ticks: list[tuple[float, str]]) -> np.ndarray:
    bar = np.zeros((8 + 3 + GLYPH_H, width, 3), dtype=np.uint8)
    bar[:] = BACKGROUND
    bar[:8] = _colormap(np.linspace(lo, hi, width), lo, hi, anchors)[None, :, :]
    for value, label in ticks:
        x = int(round((value - lo) / (hi - lo) * (width - 1)))
        bar[8:10, max(0, x) : x + 1] = TEXT
        w = text_width(label)
        draw_text(bar, min(max(0, x - w // 2), width - w), 11, label, TEXT)
    return bar


def render(model: TissueModel, *, result: AblationResult | None = None) -> np.ndarray:
    planes = report_planes(model)
    rows = [(name, _panels(model, plane, name == "fibre plane")) for name, plane in planes.items()]
    title = [f"{model.scenario.name}  t = {model.time_s:.0f} s  grid {model.grid.spacing_mm:g} mm"]
    if result is not None:
        title.append(", ".join(f"CH{ch} {w:g} W" for ch, w in sorted(result.powers_w.items())) + f"  coagulated {result.coagulated_volume_ml:.1f} ML")
        if result.tumour is not None:
            title.append(f"tumour+margin coagulated {100 * result.tumour.target_coagulated_fraction:.0f}%  max tip {result.max_tip_temp_c:.0f} C")
        else:
            title.append(f"max tip {result.max_tip_temp_c:.0f} C")
    line_h = GLYPH_H + 4
    width = PAD_PX * 3 + PANEL_PX * 2
    top = PAD_PX + line_h * len(title) + 4
    row_h = line_h + PANEL_PX + 6
    bars_h = 8 + 3 + GLYPH_H + 2 * line_h + 4
    height = top + row_h * len(rows) + bars_h + PAD_PX
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    for i, line in enumerate(title):
        draw_text(img, PAD_PX, PAD_PX + i * line_h, line, TEXT)
    for r, (name, (temp, dmg)) in enumerate(rows):
        y = top + r * row_h
        for c, (panel, what) in enumerate(((temp, "peak temperature"), (dmg, "damage log10 omega"))):
            x = PAD_PX + c * (PANEL_PX + PAD_PX)
            draw_text(img, x, y, f"{what}, {name}", TEXT)
            img[y + line_h : y + line_h + PANEL_PX, x : x + PANEL_PX] = panel
    y = top + row_h * len(rows)
    tbar = _colorbar(PANEL_PX, *TEMP_RANGE_C, _TEMP_ANCHORS, [(37, "37"), (50, "50"), (60, "60"), (80, "80"), (100, ">100 C")])
    dbar = _colorbar(PANEL_PX, *LOG_OMEGA_RANGE, _DAMAGE_ANCHORS, [(-3, "-3"), (-2, "-2"), (-1, "-1"), (0, "0=COAG"), (1, "1"), (2, "2"), (3, "3")])
    img[y : y + tbar.shape[0], PAD_PX : PAD_PX + PANEL_PX] = tbar
    img[y : y + dbar.shape[0], 2 * PAD_PX + PANEL_PX : 2 * PAD_PX + 2 * PANEL_PX] = dbar
    for i, legend in enumerate(("white: omega = 1 (coagulated)   cyan: tumour, tumour + margin (dashed)", "green: protected   blue: vessel   pink: probes (FT-8 channel)   white line: fibre")):
        draw_text(img, PAD_PX, y + tbar.shape[0] + 4 + i * line_h, legend, TEXT)
    return img


def write_png(model: TissueModel, path: str | Path, *, result: AblationResult | None = None) -> None:
    Path(path).write_bytes(png_bytes(render(model, result=result)))
