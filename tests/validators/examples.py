"""Realistic teacher outputs and their queries (CIRR, FashionIQ, InfoSeek, OVEN) shared by the rule tests."""

from __future__ import annotations

from validators.rules import CotContext


def cot(reasoning: str, answer: str) -> str:
    return f"<reasoning>{reasoning}</reasoning>\n<answer>{answer}</answer>"


CIRR = dict(
    dataset="cirr", task_id=7,
    instruction="Retrieve a day-to-day image that aligns with the modification instructions of the provided image.",
    query_txt="have two of the same dog playing on the beach",
    source_caption="A golden retriever sitting on a wooden porch.",
)
CIRR_REASONING = (
    "The reference image shows a single golden retriever sitting on a wooden porch. The modification asks for "
    "two dogs of the same breed playing on a sandy beach instead, so the porch is replaced by sand and water "
    "while the breed stays golden retriever."
)
CIRR_ANSWER = "Two golden retrievers playing together on a sandy beach near the water."

FASHIONIQ = dict(
    dataset="fashioniq", task_id=7,
    instruction="Find a fashion image that aligns with the reference image and style note.",
    query_txt="is red with a floral print and is longer",
    source_caption="A short sleeveless black dress.",
)
FASHIONIQ_REASONING = (
    "The reference dress is a short sleeveless black dress with a fitted waist. The requested changes are a red "
    "colour, a floral print and a longer hem; the sleeveless cut and the fitted waist are not mentioned, so they "
    "stay the same."
)
FASHIONIQ_ANSWER = "A long sleeveless red maxi dress with a floral print and a fitted waist."

INFOSEEK = dict(
    dataset="infoseek", task_id=6,
    instruction="Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.",
    query_txt="Which river flows through this city?",
    target_txt=(
        "Moskva River. The Moskva is a river of western Russia. It rises about 140 km west of Moscow and flows "
        "roughly east through the Smolensk and Moscow Oblasts, passing through central Moscow."
    ),
)
INFOSEEK_REASONING = (
    "The photograph shows red brick walls with pointed towers and several colourful onion domes. These are the "
    "Moscow Kremlin and Saint Basil's Cathedral on Red Square, so the city is Moscow. The river that flows "
    "through central Moscow along the Kremlin wall is the Moskva."
)
INFOSEEK_ANSWER = "The Moskva River, which flows through central Moscow in western Russia."

OVEN = dict(
    dataset="oven", task_id=8,
    instruction="Find a Wikipedia image-description pair that identifies the entity in the given image.",
    query_txt="What is the name of this building?",
    target_txt=(
        "Château de Chambord. The Château de Chambord is a castle in Chambord, Loir-et-Cher, France. It is one "
        "of the most recognisable châteaux in the world because of its distinctive French Renaissance architecture."
    ),
)
OVEN_REASONING = (
    "The building is a very large castle with many conical towers, chimneys and a central lantern tower, set in "
    "flat parkland. This skyline of towers is typical of the French Renaissance châteaux of the Loire Valley, "
    "and the symmetrical keep with a lantern identifies the Château de Chambord."
)
OVEN_ANSWER = "The Château de Chambord, a French Renaissance castle in Loir-et-Cher, France."

GOOD = {
    "cirr": (CIRR, CIRR_REASONING, CIRR_ANSWER),
    "fashioniq": (FASHIONIQ, FASHIONIQ_REASONING, FASHIONIQ_ANSWER),
    "infoseek": (INFOSEEK, INFOSEEK_REASONING, INFOSEEK_ANSWER),
    "oven": (OVEN, OVEN_REASONING, OVEN_ANSWER),
}


def ctx(name: str, reasoning: str | None = None, answer: str | None = None, **overrides) -> CotContext:
    """The good example `name`, with its reasoning/answer/fields replaced as given."""
    fields, good_reasoning, good_answer = GOOD[name]
    output = cot(good_reasoning if reasoning is None else reasoning, good_answer if answer is None else answer)
    return CotContext.build(output, **{**fields, **overrides})
