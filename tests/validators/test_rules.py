import pytest

import prompts
from tests.validators.examples import GOOD, INFOSEEK_REASONING, OVEN_REASONING, cot, ctx
from validators.defaults import RuleConfig
from validators.patterns import LEAKAGE_LABELS, labels_in_template
from validators.reasons import REASONS
from validators.rules import (
    RULES,
    CotContext,
    apply_rules,
    check_answer_length,
    check_cir_edit_applied,
    check_format,
    check_language,
    check_leakage,
    check_reasoning_length,
    check_refusal,
    check_repetition,
    check_salient_keyword,
    repeated_share,
)

CFG = RuleConfig()


@pytest.mark.parametrize("name", sorted(GOOD))
def test_realistic_outputs_pass_every_rule(name):
    assert apply_rules(ctx(name), CFG) == []


# ---------------------------------------------------------------- format and leakage
@pytest.mark.parametrize(
    "output, code",
    [
        ("", "format_empty"),
        ("The target is a red dress.", "format_missing_reasoning"),
        ("<reasoning>The dress is red and long enough.</reasoning>", "format_missing_answer"),
        ("<reasoning>The dress is red.<answer>A red dress.</answer>", "format_unclosed_tag"),
        ("<answer>A red dress.</answer><reasoning>Because it is red.</reasoning>", "format_wrong_order"),
        ("Sure! <reasoning>It is red.</reasoning><answer>A red dress.</answer>", "format_nested_or_extra_text"),
        ("<reasoning>a</reasoning><reasoning>b</reasoning><answer>c</answer>", "format_repeated_tag"),
    ],
)
def test_format_problems_are_reported(output, code):
    c = CotContext.build(output, dataset="cirr", task_id=7)
    assert code in check_format(c, CFG)
    assert code in REASONS


def test_format_failure_skips_content_rules():
    c = CotContext.build("Je suis désolé, je ne peux pas identifier ce bâtiment.", dataset="oven", task_id=8)
    assert apply_rules(c, CFG) == ["format_missing_answer", "format_missing_reasoning"]


@pytest.mark.parametrize(
    "reasoning, answer",
    [
        ("Instruction: Retrieve a day-to-day image. " + INFOSEEK_REASONING, "The Moskva River in Moscow."),
        (INFOSEEK_REASONING + "\nQuery text: Which river flows through this city?", "The Moskva River."),
        (INFOSEEK_REASONING, "Answer: The Moskva River in Moscow."),
        (INFOSEEK_REASONING, "<|im_start|>assistant The Moskva River."),
        (INFOSEEK_REASONING + " The question is {query_txt}.", "The Moskva River."),
        ("You are a helpful retrieval assistant. " + INFOSEEK_REASONING, "The Moskva River."),
        (INFOSEEK_REASONING, "The Moskva River <|emb|>"),
        ("your reasoning", "the target entity and a one-sentence summary"),
        ("Following these instructions, " + INFOSEEK_REASONING, "The Moskva River."),
        ("Task type: knowledge-intensive retrieval. " + INFOSEEK_REASONING, "The Moskva River."),
        (INFOSEEK_REASONING + "\nTarget: Moskva River", "The Moskva River."),
    ],
)
def test_prompt_leakage_is_rejected(reasoning, answer):
    assert check_leakage(ctx("infoseek", reasoning, answer), CFG) == ["prompt_leakage"]


@pytest.mark.parametrize(
    "reasoning",
    [
        "The instruction asks for the river; " + INFOSEEK_REASONING,
        "The question is about a river. " + INFOSEEK_REASONING,
        INFOSEEK_REASONING + " Key clue: the onion domes.",
    ],
)
def test_mentioning_the_task_is_not_leakage(reasoning):
    assert check_leakage(ctx("infoseek", reasoning), CFG) == []


@pytest.mark.parametrize("prompt_id", [p for p in prompts.available() if p.startswith("cot_")])
def test_teacher_prompt_labels_are_leakage_markers(prompt_id):
    labels = labels_in_template(prompts.load(prompt_id).text)
    assert labels and set(labels) <= set(LEAKAGE_LABELS), f"add {set(labels) - set(LEAKAGE_LABELS)} to LEAKAGE_LABELS"


def test_leakage_labels_extend_from_a_template():
    template = "You describe images.\nEdit request: {query_txt}\nReference caption: {caption}\n"
    labels = labels_in_template(template)
    assert labels == ("edit request", "reference caption")
    c = ctx("cirr", "Edit request: two dogs on the beach. The porch becomes sand.")
    assert check_leakage(c, CFG) == []
    assert check_leakage(c, RuleConfig(leakage_labels=LEAKAGE_LABELS + labels)) == ["prompt_leakage"]


# ---------------------------------------------------------------- lengths
@pytest.mark.parametrize("n, expected", [(15, ["reasoning_too_short"]), (16, []), (256, []), (257, ["reasoning_too_long"])])
def test_reasoning_length_boundaries(word_tokenizer_dir, n, expected):
    cfg = RuleConfig(tokenizer_spec=word_tokenizer_dir)
    assert check_reasoning_length(ctx("cirr", " ".join(["dog"] * n)), cfg) == expected


@pytest.mark.parametrize("n, expected", [(1, ["answer_too_short"]), (2, []), (64, []), (65, ["answer_too_long"])])
def test_answer_length_boundaries(word_tokenizer_dir, n, expected):
    cfg = RuleConfig(tokenizer_spec=word_tokenizer_dir)
    assert check_answer_length(ctx("oven", answer=" ".join(["castle"] * n)), cfg) == expected


def test_lengths_with_the_default_approximate_tokenizer():
    assert check_reasoning_length(ctx("fashioniq", "The dress becomes red."), CFG) == ["reasoning_too_short"]
    assert check_answer_length(ctx("infoseek", answer="Moscow"), CFG) == ["answer_too_short"]
    long_reasoning = " ".join([OVEN_REASONING] * 5)
    assert check_reasoning_length(ctx("oven", long_reasoning), CFG) == ["reasoning_too_long"]


def test_empty_answer_is_too_short():
    c = CotContext.build(cot(OVEN_REASONING, "   "), **GOOD["oven"][0])
    assert apply_rules(c, CFG)[0] == "answer_too_short"


# ---------------------------------------------------------------- repetition
@pytest.mark.parametrize(
    "reasoning, answer",
    [
        ("The dress is red and long. " * 4, "A long red dress."),
        (GOOD["fashioniq"][1], "a red dress a red dress a red dress a red dress a red dress a red dress"),
        ("The target image shows the the the the the the the the the the the the the the the dog.", "A dog."),
    ],
)
def test_heavy_repetition_is_rejected(reasoning, answer):
    assert check_repetition(ctx("fashioniq", reasoning, answer), CFG) == ["repetitive"]


def test_answer_restating_the_reasoning_is_not_repetition():
    reasoning = GOOD["cirr"][1] + " The target shows two golden retrievers playing on a sandy beach."
    c = ctx("cirr", reasoning, "Two golden retrievers playing on a sandy beach.")
    assert check_repetition(c, CFG) == []


def test_repeated_share_counts_within_segments():
    share, total = repeated_share(["a b c a b c", "a b c"], 3)
    assert (share, total) == (1 / 5, 5)


# ---------------------------------------------------------------- language
@pytest.mark.parametrize(
    "reasoning, answer",
    [
        ("L'image de référence montre une robe noire courte sans manches. La modification demande une robe rouge "
         "plus longue avec un imprimé floral.", "Une longue robe rouge à fleurs."),
        ("Das Referenzbild zeigt ein kurzes schwarzes Kleid ohne Ärmel. Gewünscht ist ein längeres rotes Kleid "
         "mit Blumenmuster.", "Ein langes rotes Kleid mit Blumenmuster."),
        ("参考图片是一件黑色无袖短连衣裙。修改要求是一件更长的红色碎花连衣裙。", "一件红色碎花长裙。"),
        # mixed: English reasoning, then a sentence or an answer in another language
        (GOOD["fashioniq"][1] + " Das Kleid soll also rot und lang sein.", GOOD["fashioniq"][2]),
        (GOOD["fashioniq"][1], "Une longue robe rouge sans manches avec un imprimé floral."),
        (GOOD["fashioniq"][1] + " 目标是一件红色的碎花长裙。", GOOD["fashioniq"][2]),
    ],
)
def test_non_english_is_rejected(reasoning, answer):
    assert check_language(ctx("fashioniq", reasoning, answer), CFG) == ["non_english"]


@pytest.mark.parametrize(
    "reasoning, answer",
    [
        (OVEN_REASONING, "Château de Chambord, Loir-et-Cher, France"),
        (OVEN_REASONING, "Schloss Neuschwanstein"),
        ("The castle on the hill has white walls and slender towers; it is the Neuschwanstein Castle near Füssen "
         "in Bavaria.", "Neuschwanstein Castle, Bavaria."),
        ("The tall lattice tower beside the river is the tallest structure in Japan.",
         "Tokyo Skytree (東京スカイツリー), a broadcasting tower in Sumida, Tokyo."),
    ],
)
def test_english_with_foreign_names_passes(reasoning, answer):
    assert check_language(ctx("oven", reasoning, answer), CFG) == []


@pytest.mark.parametrize(
    "reasoning, answer",
    [
        # mixed-language answers whose foreign sentence has no accent to give it away
        (GOOD["fashioniq"][1] + " El vestido debe ser rojo y largo, con flores en la falda.", GOOD["fashioniq"][2]),
        (GOOD["fashioniq"][1] + " Das Kleid soll also rot und lang sein, mit Blumen.", GOOD["fashioniq"][2]),
        (GOOD["fashioniq"][1], "Un vestido rojo y largo con un estampado de flores."),
        (GOOD["fashioniq"][1], "Ein langes rotes Kleid mit einem Muster aus Blumen."),
    ],
)
def test_mixed_language_answers_are_rejected(reasoning, answer):
    assert check_language(ctx("fashioniq", reasoning, answer), CFG) == ["non_english"]


def _count_language_calls(monkeypatch) -> list[str]:
    import validators.rules as rules

    calls, real = [], rules.english_probability
    monkeypatch.setattr(rules, "english_probability", lambda text: calls.append(text) or real(text))
    return calls


@pytest.mark.parametrize("dataset", ["fashioniq", "cirr", "infoseek"])
def test_a_plainly_english_answer_costs_no_language_call(monkeypatch, dataset):
    _, reasoning, answer = GOOD[dataset]
    calls = _count_language_calls(monkeypatch)
    assert check_language(ctx(dataset, reasoning, answer), CFG) == []
    assert calls == []


def test_foreign_names_give_reason_for_a_sentence_call(monkeypatch):
    calls = _count_language_calls(monkeypatch)
    assert check_language(ctx("oven", INFOSEEK_REASONING, "Château de Chambord, Loir-et-Cher, France"), CFG) == []
    assert len(calls) == 2 and "Château" in calls[1]


def test_too_short_to_judge_is_not_judged():
    assert check_language(CotContext("oven", 8, "", None, None, None, "", "Der Hund.", "Hund"), CFG) == []


# ---------------------------------------------------------------- refusal
@pytest.mark.parametrize(
    "reasoning, answer",
    [
        ("As an AI language model, I cannot see images, but a castle like this is usually in Europe.",
         "A castle in Europe."),
        (OVEN_REASONING, "I can\u2019t determine the exact building from this image."),
        ("I'm sorry, but I am unable to identify the building shown in the photograph.", "Unknown building."),
        (OVEN_REASONING + " The exact name cannot be determined from the image alone.", "A French castle."),
        ("It is impossible to tell which castle this is without more context about the location.", "A castle."),
        ("There is not enough information in the image to identify the landmark with certainty.", "A castle."),
        ("No image was provided, so I will guess from the question about a building.", "A large building."),
    ],
)
def test_refusals_are_rejected(reasoning, answer):
    assert check_refusal(ctx("oven", reasoning, answer), CFG) == ["refusal"]


@pytest.mark.parametrize(
    "reasoning",
    [
        OVEN_REASONING,
        "A sign on the gate says 'Sorry, we are closed'; " + OVEN_REASONING,
        "The edit cannot change the breed, so " + GOOD["cirr"][1],
    ],
)
def test_ordinary_text_is_not_a_refusal(reasoning):
    assert check_refusal(ctx("oven", reasoning), CFG) == []


# ---------------------------------------------------------------- salient keyword
@pytest.mark.parametrize(
    "name, answer",
    [
        ("fashioniq", "A long RED gown."),  # from the query text, case-insensitive
        ("fashioniq", "Crimson maxi dresses with floral prints."),  # plural stripping: prints -> print
        ("oven", "Chateau de Chambord."),  # from the target text, accents folded
        ("infoseek", "The Moskva."),
    ],
)
def test_answer_with_a_salient_keyword_passes(name, answer):
    assert check_salient_keyword(ctx(name, answer=answer), CFG) == []


@pytest.mark.parametrize(
    "name, answer",
    [
        ("oven", "A beautiful old structure."),
        ("oven", "The image of the entity that answers the question."),  # only stop/instruction words
        ("infoseek", "It is the one shown in the photo."),
        ("cirr", "Something like the reference, but different."),
    ],
)
def test_answer_without_a_salient_keyword_is_rejected(name, answer):
    assert check_salient_keyword(ctx(name, answer=answer), CFG) == ["no_salient_keyword"]


def test_keyword_rule_not_judged_without_source_keywords():
    c = ctx("oven", answer="A beautiful old structure.", query_txt=None, target_txt=None,
            instruction="Find the image.")
    assert check_salient_keyword(c, CFG) == []


def test_instruction_keywords_count():
    c = ctx("fashioniq", answer="A striped cotton shirt.", query_txt="is different", instruction="Find a shirt.")
    assert check_salient_keyword(c, CFG) == []


# ---------------------------------------------------------------- CIR edit applied
@pytest.mark.parametrize("answer", ["A golden retriever, sitting on a wooden porch", "a GOLDEN retriever sitting on "
                                    "a wooden porch!!", "A golden-retriever sitting on a wooden porch."])
def test_cir_answer_equal_to_source_caption_is_rejected(answer):
    assert check_cir_edit_applied(ctx("cirr", answer=answer), CFG) == ["cir_edit_not_applied"]


def test_cir_rule_scope():
    assert check_cir_edit_applied(ctx("cirr"), CFG) == []
    same = "A golden retriever sitting on a wooden porch."
    assert check_cir_edit_applied(ctx("cirr", answer=same, source_caption=None), CFG) == []
    assert check_cir_edit_applied(ctx("infoseek", answer="Moskva River", source_caption="Moskva river"), CFG) == []
    assert check_cir_edit_applied(ctx("fashioniq", answer="a short sleeveless black dress"), CFG) == [
        "cir_edit_not_applied"
    ]


# ---------------------------------------------------------------- registry and order
def test_registry_order_and_codes():
    assert list(RULES)[0] == "format"
    c = ctx("oven", "I'm sorry, I cannot tell.", "A beautiful old structure.")
    codes = apply_rules(c, CFG)
    assert codes == ["reasoning_too_short", "refusal", "no_salient_keyword"]
    assert all(code in REASONS for code in codes)


def test_every_content_rule_is_reachable_and_described():
    bad = [
        ctx("infoseek", "Query text: which river? " + INFOSEEK_REASONING),
        ctx("oven", "Too short."),
        ctx("oven", " ".join([OVEN_REASONING] * 5)),
        ctx("infoseek", answer="Moscow"),
        ctx("oven", answer=" ".join(["The Château de Chambord in France, a castle."] * 8)),
        ctx("fashioniq", "The dress is red and long. " * 4),
        ctx("fashioniq", answer="Une longue robe rouge sans manches avec un imprimé floral."),
        ctx("oven", answer="I cannot identify this building."),
        ctx("oven", answer="A beautiful old structure."),
        ctx("cirr", answer="A golden retriever sitting on a wooden porch."),
    ]
    codes = {code for c in bad for code in apply_rules(c, CFG)}
    rule_codes = {c for c in REASONS if not c.startswith(("format_", "verifier_")) and c != "duplicate_answer"}
    assert codes == rule_codes


def test_config_and_context_survive_pickling(word_tokenizer_dir):
    import pickle

    cfg = RuleConfig(tokenizer_spec=word_tokenizer_dir, reasoning_tokens=(16, 40))
    c = ctx("oven")
    cfg2, c2 = pickle.loads(pickle.dumps((cfg, c)))
    assert (cfg2, c2) == (cfg, c)
    assert apply_rules(c2, cfg2) == apply_rules(c, cfg) == ["reasoning_too_long"]  # the override travels
