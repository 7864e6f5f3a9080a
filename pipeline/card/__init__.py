"""Dataset card (README.md with Hub YAML header) and its plots."""

from pipeline.card.card import card_data, render_card, write_card

__all__ = ["card_data", "render_card", "write_card"]
