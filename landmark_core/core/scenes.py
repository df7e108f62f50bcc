"""The demo's drawing: a painter in landmark-local coordinates, one archetype per class, the
unknown landmarks, and what a scene may hold around them."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import ImageDraw

# Folder names of the real 50-class set (see shared/landmark_images_classes.txt).
DEMO_CLASSES = [
    "07.Stonehenge",
    "09.Golden_Gate_Bridge",
    "16.Eiffel_Tower",
    "18.Delicate_Arch",
    "20.Matterhorn",
    "21.Taj_Mahal",
    "26.Pont_du_Gard",
    "29.Petronas_Towers",
    "31.Washington_Monument",
    "33.Sydney_Opera_House",
    "37.Atomium",
    "45.Temple_of_Heaven",
]

Color = tuple[int, int, int]


class Painter:
    """Draws in landmark-local units: x to the right, y up, base centre at (0, 0), height ~1."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, base_y: float, scale: float,
                 squash: float, shear: float, light: np.ndarray):
        self.draw, self.cx, self.base_y, self.scale = draw, cx, base_y, scale
        self.squash, self.shear, self.light = squash, shear, light

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + (x * self.squash + y * self.shear) * self.scale, self.base_y - y * self.scale)

    def color(self, rgb: Color) -> Color:
        return tuple(int(np.clip(c * l, 0, 255)) for c, l in zip(rgb, self.light))

    def poly(self, points, rgb: Color) -> None:
        self.draw.polygon([self.pt(x, y) for x, y in points], fill=self.color(rgb))

    def rect(self, x0, y0, x1, y1, rgb: Color) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], rgb)

    def line(self, points, rgb: Color, width: float) -> None:
        self.draw.line([self.pt(x, y) for x, y in points], fill=self.color(rgb),
                       width=max(1, int(round(width * self.scale))))

    def ellipse(self, x, y, rx, ry, rgb: Color) -> None:
        (x0, y0), (x1, y1) = self.pt(x - rx, y + ry), self.pt(x + rx, y - ry)
        self.draw.ellipse([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=self.color(rgb))


def jittered(rng: np.random.Generator, rgb: Color, amount: int = 18) -> Color:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


# --- archetypes: each draws one landmark and returns nothing -----------------------------

def _stonehenge(p: Painter, rng) -> None:
    stone = jittered(rng, (128, 124, 116))
    n = int(rng.integers(7, 11))
    for k in sorted(range(n), key=lambda k: -math.cos(2 * math.pi * k / n)):  # back stones first
        a = 2 * math.pi * k / n + rng.uniform(-0.1, 0.1)
        x, depth = 0.9 * math.sin(a), math.cos(a)
        h = 0.45 + 0.1 * rng.random() - 0.08 * depth
        w = 0.12 + 0.03 * rng.random()
        y0 = 0.08 * depth
        shade = 0.8 + 0.2 * rng.random()
        p.rect(x - w / 2, y0, x + w / 2, y0 + h, tuple(int(c * shade) for c in stone))
        if rng.random() < 0.6:  # lintel
            p.rect(x - w / 2 - 0.02, y0 + h, x + w / 2 + 0.18, y0 + h + 0.07, tuple(int(c * 0.9) for c in stone))
    if rng.random() < 0.7:  # a fallen stone
        p.rect(-0.3, -0.05, 0.2, 0.03, stone)


def _golden_gate(p: Painter, rng) -> None:
    red = jittered(rng, (192, 64, 40))
    span = 1.6
    for tx in (-span / 2, span / 2):
        p.rect(tx - 0.05, -0.1, tx - 0.025, 1.0, red)
        p.rect(tx + 0.025, -0.1, tx + 0.05, 1.0, red)
        for yb in (0.35, 0.6, 0.85, 0.98):
            p.rect(tx - 0.05, yb - 0.03, tx + 0.05, yb, red)
    p.rect(-1.6, 0.2, 1.6, 0.25, red)  # deck
    cable = [(x, 0.25 + 0.75 * (x / (span / 2)) ** 2) for x in np.linspace(-span / 2, span / 2, 24)]
    p.line(cable, red, 0.012)
    p.line([(-span / 2, 0.98), (-1.6, 0.3)], red, 0.012)
    p.line([(span / 2, 0.98), (1.6, 0.3)], red, 0.012)
    for x, y in cable[1:-1:2]:
        p.line([(x, y), (x, 0.25)], red, 0.004)


def _eiffel(p: Painter, rng) -> None:
    iron = jittered(rng, (110, 84, 60), 25)

    def half_width(y):  # curved legs narrowing to a spire
        return 0.32 * (1 - y) ** 2.2 + 0.015

    ys = np.linspace(0, 1, 30)
    left = [(-half_width(y), y) for y in ys]
    right = [(half_width(y), y) for y in ys[::-1]]
    p.poly(left + right, iron)
    # the arch between the legs
    p.line([(-0.22, 0.0)] + [(0.22 * math.cos(t), 0.12 * math.sin(t)) for t in np.linspace(math.pi, 0, 12)][1:] + [(0.22, 0)],
           (200, 200, 200), 0.01)
    for y in np.linspace(0.05, 0.75, 9):
        p.line([(-half_width(y), y), (half_width(y + 0.08), y + 0.08)], (70, 52, 38), 0.008)
        p.line([(half_width(y), y), (-half_width(y + 0.08), y + 0.08)], (70, 52, 38), 0.008)
    for y in (0.2, 0.45):  # platforms
        w = half_width(y) + 0.03
        p.rect(-w, y, w, y + 0.025, (80, 60, 45))
    p.rect(-0.01, 1.0, 0.01, 1.08, iron)


def _delicate_arch(p: Painter, rng) -> None:
    rock = jittered(rng, (186, 98, 58), 22)
    outer = [(0.55 * math.cos(t), 0.9 * math.sin(t)) for t in np.linspace(math.pi, 0, 24)]
    inner = [(0.36 * math.cos(t), 0.68 * math.sin(t)) for t in np.linspace(0, math.pi, 24)]
    p.poly(outer + [(0.55, 0), (0.36, 0)] + inner + [(-0.36, 0)], rock)
    p.poly([(-0.62, 0), (-0.5, 0.45), (-0.38, 0.2), (-0.36, 0)], tuple(int(c * 0.85) for c in rock))
    p.poly([(-1.2, -0.02), (1.2, -0.02), (1.0, 0.05), (-1.0, 0.06)], (170, 120, 90))  # slickrock


def _matterhorn(p: Painter, rng) -> None:
    rockc = jittered(rng, (96, 90, 88))
    peak_x = rng.uniform(-0.1, 0.15)
    outline = [(-1.3, 0), (-0.7, 0.35), (-0.3, 0.6), (peak_x - 0.05, 0.97), (peak_x, 1.0),
               (peak_x + 0.08, 0.9), (0.35, 0.62), (0.6, 0.45), (1.3, 0)]
    p.poly(outline, rockc)
    snow = (235, 238, 245)
    p.poly([(-0.45, 0.5), (-0.3, 0.6), (peak_x - 0.05, 0.97), (peak_x, 1.0), (peak_x + 0.08, 0.9),
            (0.3, 0.65), (0.1, 0.6), (0.0, 0.72), (-0.2, 0.55)], snow)
    p.poly([(-0.9, 0.2), (-0.7, 0.35), (-0.55, 0.3), (-0.75, 0.18)], snow)
    p.line([(peak_x, 1.0), (peak_x - 0.02, 0.5)], (60, 56, 56), 0.01)


def _taj_mahal(p: Painter, rng) -> None:
    marble = jittered(rng, (236, 230, 220), 12)
    shadow = tuple(int(c * 0.8) for c in marble)
    p.rect(-0.75, 0, 0.75, 0.06, shadow)  # plinth
    p.rect(-0.38, 0.06, 0.38, 0.42, marble)
    p.poly([(-0.12, 0.06), (-0.12, 0.3), (0, 0.38), (0.12, 0.3), (0.12, 0.06)], shadow)  # iwan
    for sx in (-0.27, 0.27):
        p.poly([(sx - 0.05, 0.1), (sx - 0.05, 0.22), (sx, 0.26), (sx + 0.05, 0.22), (sx + 0.05, 0.1)], shadow)
    p.rect(-0.12, 0.42, 0.12, 0.5, marble)  # drum
    dome = [(0.2 * math.sin(t) * (1.15 - 0.5 * (t / math.pi) ** 3), 0.5 + 0.32 * (1 - math.cos(t))) for t in np.linspace(0, math.pi, 20)]
    p.poly([(-x, y) for x, y in dome] + [(x, y) for x, y in dome[::-1]], marble)
    p.line([(0, 1.14), (0, 1.24)], (200, 170, 90), 0.01)
    for mx in (-0.65, 0.65):  # minarets
        p.rect(mx - 0.025, 0.06, mx + 0.025, 0.62, marble)
        p.ellipse(mx, 0.65, 0.035, 0.035, marble)
        for yb in (0.25, 0.45):
            p.rect(mx - 0.035, yb, mx + 0.035, yb + 0.015, shadow)
    for sx in (-0.3, 0.3):  # small domes
        p.ellipse(sx, 0.46, 0.06, 0.05, marble)


def _pont_du_gard(p: Painter, rng) -> None:
    stone = jittered(rng, (196, 172, 128), 18)
    dark = (60, 50, 40)
    tiers = [(0.0, 0.35, 6, 0.24), (0.35, 0.65, 11, 0.13), (0.65, 0.78, 30, 0.045)]
    for y0, y1, n, r in tiers:
        p.rect(-1.4, y0, 1.4, y1, stone)
        width = 2.8 / n
        for k in range(n):
            xc = -1.4 + width * (k + 0.5)
            rr = min(r, width * 0.4)
            top = y1 - 0.05 * (y1 - y0) - rr
            pts = [(xc - rr, y0), (xc - rr, top)] + [(xc - rr * math.cos(t), top + rr * math.sin(t)) for t in np.linspace(0, math.pi, 10)] + [(xc + rr, y0)]
            p.poly(pts, dark)


def _petronas(p: Painter, rng) -> None:
    steel = jittered(rng, (176, 184, 196), 14)
    for tx in (-0.28, 0.28):
        w = 0.14
        for k, (y0, y1) in enumerate([(0, 0.55), (0.55, 0.7), (0.7, 0.8), (0.8, 0.86), (0.86, 0.9)]):
            ww = w * (1 - 0.16 * k)
            p.rect(tx - ww, y0, tx + ww, y1, tuple(int(c * (1 - 0.04 * k)) for c in steel))
        p.line([(tx, 0.9), (tx, 1.08)], steel, 0.008)
        for y in np.linspace(0.03, 0.85, 16):
            p.line([(tx - w * 0.9, y), (tx + w * 0.9, y)], (120, 128, 140), 0.003)
    p.rect(-0.16, 0.4, 0.16, 0.43, (140, 146, 156))  # skybridge
    p.line([(-0.16, 0.33), (-0.05, 0.4)], (140, 146, 156), 0.006)
    p.line([(0.16, 0.33), (0.05, 0.4)], (140, 146, 156), 0.006)


def _washington(p: Painter, rng) -> None:
    marble = jittered(rng, (226, 222, 210), 12)
    p.poly([(-0.055, 0), (0.055, 0), (0.04, 0.9), (0, 1.0), (-0.04, 0.9)], marble)
    p.poly([(0, 0), (0.055, 0), (0.04, 0.9), (0, 1.0)], tuple(int(c * 0.85) for c in marble))
    p.rect(-0.056, 0.45, 0.056, 0.46, tuple(int(c * 0.92) for c in marble))  # the colour change line
    for k in range(int(rng.integers(0, 9))):  # flag ring
        fx = -0.35 + 0.7 * k / 8
        p.line([(fx, 0), (fx, 0.08)], (200, 200, 200), 0.003)
        p.rect(fx, 0.065, fx + 0.025, 0.08, (180, 40, 50))


def _sydney_opera(p: Painter, rng) -> None:
    white = jittered(rng, (240, 236, 226), 10)
    p.rect(-0.9, 0, 0.9, 0.12, (196, 170, 140))  # podium
    for k, (x0, h, w) in enumerate([(-0.75, 0.55, 0.32), (-0.45, 0.75, 0.38), (-0.05, 0.6, 0.32), (0.25, 0.45, 0.28), (0.5, 0.32, 0.22)]):
        shade = 0.78 + 0.22 * (k % 2)
        shell = [(x0, 0.12), (x0 + w * 0.35, 0.12 + h * 0.75), (x0 + w * 0.55, 0.12 + h), (x0 + w, 0.12)]
        p.poly(shell, tuple(int(c * shade) for c in white))
        p.line([(x0 + w * 0.2, 0.14), (x0 + w * 0.5, 0.12 + h * 0.9)], (200, 196, 186), 0.004)


def _atomium(p: Painter, rng) -> None:
    metal = jittered(rng, (190, 196, 204), 14)
    tube = (150, 156, 164)
    a = rng.uniform(0, math.pi / 2)
    corners = [np.array([x, y, z]) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    rot = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    tilt = np.array([[1, 0, 0], [0, math.cos(0.955), -math.sin(0.955)], [0, math.sin(0.955), math.cos(0.955)]])
    nodes = [np.zeros(3)] + corners
    proj = [(tilt @ rot @ (0.3 * n)) for n in nodes]
    pts = [(q[0], 0.55 + q[1]) for q in proj]
    p.line([(0, 0), pts[0]], tube, 0.03)
    for i in range(1, 9):
        p.line([pts[0], pts[i]], tube, 0.02)
        for j in range(i + 1, 9):
            if np.abs(nodes[i] - nodes[j]).sum() == 2:
                p.line([pts[i], pts[j]], tube, 0.018)
    for k in sorted(range(9), key=lambda k: proj[k][2]):
        x, y = pts[k]
        p.ellipse(x, y, 0.085, 0.085, metal)
        p.ellipse(x - 0.025, y + 0.025, 0.03, 0.03, (235, 238, 242))


def _temple_of_heaven(p: Painter, rng) -> None:
    blue = jittered(rng, (40, 70, 140), 16)
    red = (150, 40, 35)
    marble = (228, 226, 218)
    for k, (w, y0) in enumerate([(0.8, 0), (0.65, 0.06), (0.5, 0.12)]):  # marble terraces
        p.rect(-w, y0, w, y0 + 0.06, marble)
    y = 0.18
    for w, h in [(0.42, 0.16), (0.32, 0.15), (0.22, 0.14)]:
        p.rect(-w * 0.75, y, w * 0.75, y + h * 0.6, red)
        p.poly([(-w, y + h * 0.55), (w, y + h * 0.55), (w * 0.6, y + h * 1.05), (-w * 0.6, y + h * 1.05)], blue)
        y += h
    p.ellipse(0, y + 0.04, 0.035, 0.05, (210, 170, 60))


# --- landmarks that are never a class: the demo's unknown/ photos -----------------------------

def _lighthouse(p: Painter, rng) -> None:
    white, red = jittered(rng, (235, 235, 230)), jittered(rng, (190, 40, 40))
    bands = int(rng.integers(2, 5))
    for k in range(bands * 2):  # a tapering tower in alternating bands
        y0, y1 = 0.8 * k / (bands * 2), 0.8 * (k + 1) / (bands * 2)
        w0, w1 = 0.14 - 0.06 * y0, 0.14 - 0.06 * y1
        p.poly([(-w0, y0), (w0, y0), (w1, y1), (-w1, y1)], red if k % 2 else white)
    p.rect(-0.07, 0.8, 0.07, 0.9, (250, 230, 140))  # lantern
    p.poly([(-0.09, 0.9), (0.09, 0.9), (0, 1.0)], (40, 40, 40))


def _pyramid(p: Painter, rng) -> None:
    stone = jittered(rng, (200, 170, 110), 20)
    p.poly([(-0.9, 0), (0.9, 0), (0, 0.75)], stone)
    p.poly([(0, 0.75), (0.9, 0), (0.35, 0)], tuple(int(c * 0.75) for c in stone))  # the shaded face
    if rng.random() < 0.6:
        p.poly([(1.0, 0), (1.6, 0), (1.3, 0.35)], tuple(int(c * 0.9) for c in stone))


def _windmill(p: Painter, rng) -> None:
    body = jittered(rng, (150, 110, 80))
    p.poly([(-0.2, 0), (0.2, 0), (0.12, 0.65), (-0.12, 0.65)], body)
    p.poly([(-0.15, 0.65), (0.15, 0.65), (0, 0.8)], (90, 60, 50))
    angle = rng.uniform(0, math.pi / 2)
    for k in range(4):
        a = angle + k * math.pi / 2
        end = (0.55 * math.cos(a), 0.68 + 0.55 * math.sin(a))
        p.line([(0, 0.68), end], (230, 225, 210), 0.04)


#: Landmark-like scenes that are none of the classes, and plain scenes with no landmark (``None``).
UNKNOWN_ARCHETYPES: dict[str, Callable[[Painter, np.random.Generator], None] | None] = {
    "lighthouse": _lighthouse, "pyramid": _pyramid, "windmill": _windmill, "no_landmark": None,
}

ARCHETYPES: dict[str, Callable[[Painter, np.random.Generator], None]] = {
    "07.Stonehenge": _stonehenge,
    "09.Golden_Gate_Bridge": _golden_gate,
    "16.Eiffel_Tower": _eiffel,
    "18.Delicate_Arch": _delicate_arch,
    "20.Matterhorn": _matterhorn,
    "21.Taj_Mahal": _taj_mahal,
    "26.Pont_du_Gard": _pont_du_gard,
    "29.Petronas_Towers": _petronas,
    "31.Washington_Monument": _washington,
    "33.Sydney_Opera_House": _sydney_opera,
    "37.Atomium": _atomium,
    "45.Temple_of_Heaven": _temple_of_heaven,
}
# Tall archetypes are drawn smaller so that they fit the frame as often as the wide ones.
ARCHETYPE_ASPECT = {"07.Stonehenge": 0.9, "09.Golden_Gate_Bridge": 0.55, "18.Delicate_Arch": 0.9, "20.Matterhorn": 0.55,
           "26.Pont_du_Gard": 0.6, "37.Atomium": 0.8, "33.Sydney_Opera_House": 0.8, "21.Taj_Mahal": 0.75}

# --- scene ---------------------------------------------------------------------------------

TIMES_OF_DAY = {  # sky top, sky horizon, light multiplier
    "day": ((70, 130, 210), (175, 210, 240), (1.0, 1.0, 1.0)),
    "overcast": ((150, 156, 164), (200, 204, 208), (0.85, 0.87, 0.9)),
    "sunset": ((60, 60, 130), (250, 150, 90), (1.05, 0.8, 0.65)),
    "dusk": ((15, 20, 50), (80, 70, 110), (0.45, 0.45, 0.6)),
    "haze": ((190, 200, 210), (225, 225, 220), (0.95, 0.95, 0.95)),
}
GROUNDS = {"grass": (80, 130, 60), "sand": (200, 170, 120), "water": (50, 90, 130),
            "pavement": (120, 118, 115), "snow": (225, 228, 235), "dirt": (130, 100, 70)}
SCENE_SIZES = [(256, 192), (240, 180), (288, 192), (192, 256), (224, 224), (320, 240)]


def vertical_gradient(width: int, height: int, top: Color, bottom: Color) -> np.ndarray:
    t = np.linspace(0, 1, height)[:, None, None]
    column = (1 - t) * np.array(top) + t * np.array(bottom)
    return np.broadcast_to(column, (height, width, 3)).copy()


def draw_tree(draw, x, y, s, rng, light):
    trunk = tuple(int(c * l) for c, l in zip((80, 55, 35), light))
    crown = tuple(int(c * l) for c, l in zip(jittered(rng, (50, 100, 45), 25), light))
    draw.rectangle([x - s * 0.06, y - s * 0.5, x + s * 0.06, y], fill=trunk)
    if rng.random() < 0.5:
        draw.ellipse([x - s * 0.35, y - s * 1.1, x + s * 0.35, y - s * 0.35], fill=crown)
    else:
        draw.polygon([(x - s * 0.3, y - s * 0.35), (x + s * 0.3, y - s * 0.35), (x, y - s * 1.3)], fill=crown)


def draw_person(draw, x, y, s, rng, light):
    color = tuple(int(c * l) for c, l in zip(tuple(int(v) for v in rng.integers(20, 230, 3)), light))
    draw.rectangle([x - s * 0.12, y - s * 0.75, x + s * 0.12, y - s * 0.3], fill=color)
    draw.rectangle([x - s * 0.1, y - s * 0.3, x + s * 0.1, y], fill=tuple(int(c * 0.5) for c in color))
    draw.ellipse([x - s * 0.09, y - s * 0.95, x + s * 0.09, y - s * 0.77], fill=tuple(int(c * l) for c, l in zip((220, 180, 150), light)))


def draw_building(draw, x, y, w, h, rng, light):
    base = jittered(rng, (150, 140, 130), 50)
    draw.rectangle([x, y - h, x + w, y], fill=tuple(int(c * l) for c, l in zip(base, light)))
    window = tuple(int(c * l) for c, l in zip((60, 70, 90), light))
    for wy in np.arange(y - h + 4, y - 4, 7):
        for wx in np.arange(x + 3, x + w - 3, 6):
            draw.rectangle([wx, wy, wx + 2, wy + 3], fill=window)
