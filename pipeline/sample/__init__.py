"""Deterministic mini-M-BEIR generator (the embedded default input): `generate(root, seed, scale)`, and
`write_sample` for a command's output folder."""

from pipeline.sample.generate import generate, write_sample
from pipeline.sample.world import OBJECTS, Entity, Obj, entities

__all__ = ["generate", "write_sample", "OBJECTS", "Entity", "Obj", "entities"]
