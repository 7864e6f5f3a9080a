"""Deterministic mini-M-BEIR generator (the embedded default input): `generate(root, seed, scale)`."""

from pipeline.sample.generate import generate
from pipeline.sample.world import OBJECTS, Entity, Obj, entities

__all__ = ["generate", "OBJECTS", "Entity", "Obj", "entities"]
