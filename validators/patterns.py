"""The word lists and regexes the rule filter matches against, in one place (PAPER.md §2 Phase 3)."""

from __future__ import annotations

import re

# Field labels of the teacher prompts. A line of the reasoning or answer that starts with one of them echoes the
# prompt's scaffolding ("Instruction: Find an image ...") instead of answering it. Extend with the labels of the
# teacher templates actually used: `RuleConfig(leakage_labels=LEAKAGE_LABELS + labels_in_template(text))`.
LEAKAGE_LABELS: tuple[str, ...] = (
    "instruction", "query", "query text", "query image", "modification", "modification text",
    "reference image", "source image", "target text", "target caption", "candidate", "candidate text",
    "positive candidate", "question", "task", "dataset", "output format", "format", "system", "user",
    "assistant", "reasoning", "answer", "task type", "target",
)

# Prompt or chat-template material that never belongs in a teacher's answer, wherever it appears.
LEAKAGE_PATTERNS: tuple[str, ...] = (
    r"<\|[a-z_]+\|>",  # chat / vision special tokens: <|im_start|>, <|image_pad|>, <|emb|>
    r"</?(?:image|img|think|system|user|assistant)>",
    r"\{[a-z_]+\}",  # an unfilled template field such as {query_txt}
    r"\byou are an? (?:[\w-]+ ){0,4}(?:assistant|expert|annotator|teacher|model|encoder|retriever)\b",
    r"\b(?:respond|reply|answer) (?:only )?in the (?:following|required) format\b",
    r"\b(?:these|the above) instructions\b|\bthe (?:system )?prompt\b",
    # the format line's placeholders copied verbatim: "<reasoning>your reasoning</reasoning>"
    r"^\s*(?:your reasoning|the (?:edited )?target (?:caption|description|passage description)"
    r"|the target entity and a one-sentence summary)\s*\.?\s*$",
)

# Refusals and assistant boilerplate (§2 Phase 3: "As an AI…", "I can't determine…"). Matched case-insensitively
# after curly apostrophes are straightened.
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bas an ai\b",
    r"\bas an? (?:large )?(?:language|multimodal|vision[- ]language) model\b",
    r"\bi(?:'m| am) (?:sorry|afraid|unable|not able)\b",
    r"\bi apologi[sz]e\b",
    r"\bi (?:can't|cannot|can not|couldn't|could not|am unable to|won't be able to) "
    r"(?:determine|identify|tell|see|view|access|know|say|answer|help|assist|provide|verify|be (?:sure|certain))\b",
    r"\b(?:cannot|can't|could not|couldn't) be (?:determined|identified|known|inferred|verified)\b",
    r"\b(?:it is|it's|is) (?:not|im)possible to (?:determine|identify|tell|say|know)\b",
    r"\bunable to (?:determine|identify|tell)\b",
    r"\bi (?:do not|don't) (?:know|have (?:access|enough information))\b",
    r"\b(?:not enough|insufficient) (?:information|context|detail)\b",
    r"\bno (?:image|picture|photo) (?:is|was|has been) (?:provided|attached|shown|given)\b",
    r"\bwithout (?:seeing|access to) the (?:image|picture|photo)\b",
)

# English stop words, plus the vocabulary of M-BEIR's retrieval instructions ("Find a Wikipedia image that answers
# my question"), which says what to retrieve, not what the target is: neither counts as a salient keyword.
STOP_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each either else ever every few for from
    further had has have having he her here hers herself him himself his how however i if in into is it its
    itself just least less like made make many may me might more most much must my myself neither no nor not
    now of off often on once one only or other our ours ourselves out over own per perhaps quite rather same
    she should since so some such than that the their theirs them themselves then there these they this those
    though through thus to too under until up upon us very via was we well were what when where whether which
    while who whom whose why will with within without would yet you your yours yourself yourselves
    image images photo photos photograph picture pictures figure visual look looks looking shown shows show
    showing depict depicts depicting find retrieve retrieval identify search locate match matches matching
    similar given based provide provided description describe describes caption captions text texts document
    documents article wikipedia question questions answer answers query reference target candidate modify
    modified modification instruction change changed edit edited want need please following specific known
    called name named entity thing object item kind type sort appear appears different new
    """.split()
)


# Language screening (validators.rules.plainly_english). English function words; some ("a", "in", "is", "an",
# "to") are also words of other languages, which is why a sentence must also be free of FOREIGN_FUNCTION_WORDS
# and of non-ASCII characters. A sentence at least 20 % made of them is English for any threshold the rule uses
# (py3langid puts every such sentence of tests/validators far above SENTENCE_ENGLISH_MIN_PROB).
ENGLISH_MARKERS: frozenset[str] = frozenset(
    """
    a an the and or but of in on at to for by with from into onto as is are was were be been being has have
    had it its it's this that these those which who whose what where when while there their they them than
    not would should could will can may so such each every all both also only its
    shows show showing shown image photo picture
    """.split()
)
ENGLISH_MARKER_SHARE = 0.2
# Function words of the languages the rule rejects most often; one of them sends the sentence to py3langid.
FOREIGN_FUNCTION_WORDS: frozenset[str] = frozenset(
    """
    de el la los las y que es en con para por del al una un uno unos unas muy pero como su sus esta este
    der die das und ist nicht ein eine einen mit von zu auf den dem des sich auch sind wird aus bei oder
    le les et est une du au aux il elle sont dans avec pour sur ce cette qui pas ou
    di che non per sono gli della nel il lo e o ed
    da em um uma os ao na nos mais
    het een van op niet zijn voor ook
    och att det som pa och er ikke til
    """.split()
)


def compile_any(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One case-insensitive regex matching any of `patterns`."""
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


_LABEL_LINE = re.compile(r"^[ \t]*([A-Z][A-Za-z ()/-]{0,40}?)[ \t]*:", re.MULTILINE)


def labels_in_template(text: str) -> tuple[str, ...]:
    """Field labels ("Query text:") at line starts of a prompt template, lower-cased, in order of appearance."""
    return tuple(dict.fromkeys(m.group(1).strip().lower() for m in _LABEL_LINE.finditer(text)))
