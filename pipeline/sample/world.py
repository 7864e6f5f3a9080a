"""The small, learnable world behind the mini-M-BEIR sample: coloured shapes on backgrounds, and named
entities whose emblem is one such shape. Pictures draw exactly what the texts say."""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from functools import cache

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220),
    "yellow": (240, 210, 30), "purple": (140, 50, 170), "orange": (250, 140, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
IMAGE_SIDE = 64
N_ENTITIES = 80

KINDS = ("crest", "flag", "emblem", "badge", "seal")
REGIONS = ("Norland", "Estavia", "the Vell Coast", "Marrow Isles", "Kestrel Valley", "Old Tarn", "Suvaria", "Pellin")
NAMED_AFTER = ("the river Oska", "the poet Ilse Varn", "Mount Dorrel", "the lake Miren", "the founder Aric Holt",
               "the battle of Senn", "the city of Quell", "the forest of Brannock", "the saint Orla",
               "the ship Calder")
_SYLLABLES = ("va", "re", "lia", "to", "mor", "ka", "sen", "dri", "lo", "nu", "bel", "ash", "quin", "ter", "ro")


@dataclass(frozen=True)
class Obj:
    """A picture: one filled shape of one colour on a plain background."""

    shape: str
    colour: str
    background: str

    @property
    def slug(self) -> str:
        return f"{self.shape}_{self.colour}_{self.background}"

    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"

    def replace(self, **change: str) -> Obj:
        return Obj(**{"shape": self.shape, "colour": self.colour, "background": self.background, **change})


@dataclass(frozen=True)
class Entity:
    """A knowledge-base entity (OVEN/InfoSeek/WebQA) whose emblem image is `symbol`."""

    wikidata_id: str
    name: str
    kind: str
    region: str
    named_after: str
    year: int
    symbol: Obj

    def page(self) -> str:
        """The entity page text: title, then a summary that includes every fact and the emblem's look."""
        return (f"{self.name}. The {self.name} is a {self.kind} from {self.region}, named after {self.named_after} "
                f"and first used in {self.year}. It shows {self.symbol.caption()}.")


OBJECTS: tuple[Obj, ...] = tuple(Obj(s, c, b) for s in SHAPES for c in COLOURS for b in BACKGROUNDS)


@cache
def neighbours(obj: Obj) -> tuple[Obj, ...]:
    """Objects that differ from obj in exactly one attribute (hard negatives, CIR targets)."""
    out = [obj.replace(shape=s) for s in SHAPES if s != obj.shape]
    out += [obj.replace(colour=c) for c in COLOURS if c != obj.colour]
    out += [obj.replace(background=b) for b in BACKGROUNDS if b != obj.background]
    return tuple(out)


@cache
def entities(seed: int = 0) -> tuple[Entity, ...]:
    """N_ENTITIES entities with distinct names and distinct emblems, fixed by seed."""
    rng = random.Random(f"entities:{seed}")
    symbols = rng.sample(OBJECTS, N_ENTITIES)
    names: set[str] = set()
    out = []
    for i, symbol in enumerate(symbols):
        while True:
            word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
            kind = rng.choice(KINDS)
            name = f"{word} {kind.capitalize()}"
            if name not in names:
                names.add(name)
                break
        out.append(Entity(f"Q{7100 + i}", name, kind, rng.choice(REGIONS), rng.choice(NAMED_AFTER),
                          rng.randint(1700, 1999), symbol))
    return tuple(out)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    raise ValueError(shape)


def render(obj: Obj, variant: int = 0) -> bytes:
    """A 64x64 RGB JPEG of obj. Variant 1 is the same scene, smaller and shifted (a near-duplicate photo)."""
    img = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), BACKGROUNDS[obj.background])
    draw = ImageDraw.Draw(img)
    cx, cy, r = (32, 32, 24) if variant == 0 else (36, 35, 18)
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj.shape == "square":
        s = r * 0.8
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif obj.shape == "cross":
        w = r * 0.35
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(obj.shape, cx, cy, r), fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()
