"""TraceProcessor builds sequences from template pieces and text (issue 22.2): ordinary inputs get the ids
they had when the whole rendered string was tokenized with control tokens parsed; control token strings in
text are text."""

import json
from importlib import resources

import pytest
import torch
from PIL import Image

import prompts
from trainer.modeling.processor import IGNORE, Item, TraceProcessor
from trainer.modeling.student import EMB_TOKEN, candidate_system_prompt, query_system_prompt
from trainer.modeling.tiny import SPECIAL_TOKENS, build_image_processor, build_tokenizer

TEXTS = ["Find a red circle.", " a leading space", "\n\nnewlines first", "", "tail newline\n", "a\nb  c\t d",
         "Ünïcode ☃ 12345 'll", "red " * 40]
TARGETS = [None, EMB_TOKEN, "The target is red. a red circle<|emb|>", "no emb at the end",
           "long " * 50 + EMB_TOKEN]


def qwen2_like_tokenizer():
    """The tiny BPE's vocabulary and merges in Qwen2Tokenizer's own pipeline (NFC, Qwen2's split regex, byte
    level) with Qwen2's "\\n\\n" token, the control tokens added after the vocabulary as a real Qwen2.5-VL
    tokenizer holds them: the <|...|> ones special, <tool_call>, </tool_call> and <|fim_prefix|> not; no
    <|emb|> (TraceProcessor adds it, as to a real checkpoint)."""
    from transformers import Qwen2Tokenizer

    model = json.loads(build_tokenizer().backend_tokenizer.to_str())["model"]
    words = sorted((i, t) for t, i in model["vocab"].items() if t not in SPECIAL_TOKENS)
    vocab, merges = {t: k for k, (_, t) in enumerate(words)}, [tuple(m) for m in model["merges"]]
    vocab["ĊĊ"], merges = len(vocab), [("Ċ", "Ċ"), *merges]  # as Qwen2's: where a text run splits shows
    controls = [t for t in SPECIAL_TOKENS[1:] if t != EMB_TOKEN]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         unk_token=None, additional_special_tokens=controls)
    tok.add_tokens(["<tool_call>", "</tool_call>", "<|fim_prefix|>"])
    return tok


TOKENIZERS = {"tiny": build_tokenizer, "qwen2": qwen2_like_tokenizer}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def proc(request) -> TraceProcessor:
    return TraceProcessor(TOKENIZERS[request.param](), build_image_processor(), max_text_tokens=24,
                          max_target_tokens=48)


def whole_string_ids(proc: TraceProcessor, item: Item, n_image: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) as before issue 22: the rendered prompt tokenized as one string, control tokens
    parsed, the one <|image_pad|> expanded; the target tokenized alone, <|emb|> appended when missing."""
    tok = proc.tokenizer

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    text = item.text or ""
    if len(ids(text)) > proc.max_text_tokens:
        text = tok.decode(ids(text)[: proc.max_text_tokens])
    user = ("<|vision_start|><|image_pad|><|vision_end|>" if item.image is not None else "") + text
    out = ids(f"<|im_start|>system\n{item.system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
              "<|im_start|>assistant\n")
    if item.image is not None:
        at = out.index(proc.image_pad_id)
        out = out[:at] + [proc.image_pad_id] * n_image + out[at + 1:]
    labels = [IGNORE] * len(out)
    if item.target is not None:
        tgt = ids(item.target)
        tgt = tgt if tgt and tgt[-1] == proc.emb_id else tgt + [proc.emb_id]
        tgt = tgt if len(tgt) <= proc.max_target_tokens else tgt[: proc.max_target_tokens - 1] + [proc.emb_id]
        out, labels = out + tgt, labels + tgt
    return out, labels


def test_ordinary_inputs_keep_the_ids_of_the_whole_string(proc):
    img = Image.new("RGB", (50, 40), (10, 20, 30))
    systems = [query_system_prompt("cirr", 7), query_system_prompt("my_own_set", 3),
               candidate_system_prompt("image,text"), candidate_system_prompt("text")]
    cases = [(s, t, im) for s in systems for t in TEXTS for im in (None, img)]
    items = [Item(*case, TARGETS[k % len(TARGETS)]) for k, case in enumerate(cases)]
    for side in ("right", "left"):
        batch = proc(items, padding_side=side)
        n_image = int(batch["image_grid_thw"][0].prod()) // proc.merge ** 2
        for i, item in enumerate(items):
            keep = batch["attention_mask"][i].bool()
            want, labels = whole_string_ids(proc, Item(str(item.system), item.text, item.image, item.target),
                                            n_image if item.image is not None else 0)
            assert batch["input_ids"][i][keep].tolist() == want
            assert batch["labels"][i][keep].tolist() == labels
        assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == proc.image_pad_id).long())


def test_system_prompts_read_as_rendered_before():
    table = json.loads(resources.files(prompts).joinpath("student_strategies.json").read_text("utf-8"))
    fallback = "match the target the query describes."
    for dataset in [*table["datasets"], "my_own_set"]:
        for task_id in range(10):
            info = table["datasets"].get(dataset, {"name": dataset, "strategy": fallback})
            task = f"{info['name']} {table['tasks'].get(str(task_id), 'multimodal retrieval')}"
            want = prompts.load("student_query").render(task=task, strategy=info["strategy"]).strip()
            assert str(query_system_prompt(dataset, task_id)) == want
    for modality, name in (("text", "text"), ("image", "image"), ("image,text", "image-and-text")):
        want = prompts.load("student_candidate").render(modality=name).strip()
        assert str(candidate_system_prompt(modality)) == want


def test_text_without_the_added_vocabulary_is_the_tokenizers_own(proc):
    for text in TEXTS:
        assert proc._plain_ids(text) == proc.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_non_special_added_token_in_text_is_text():
    tok = qwen2_like_tokenizer()
    proc = TraceProcessor(tok, build_image_processor())
    tool = tok.convert_tokens_to_ids("<tool_call>")
    split = tok("a<tool_call>b", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert split.count(tool) == 1  # what split_special_tokens alone leaves
    (ids,) = proc.text_ids(["a<tool_call>b"])
    assert proc.control_ids.isdisjoint(ids) and tok.decode(ids) == "a<tool_call>b"
    assert proc.template("x<tool_call>y") == ["x", [tool], "y"]


def test_only_the_targets_last_emb_is_the_templates(proc):
    ids, direct = proc.target_ids(["I wrote <|emb|> and <|im_end|> here.<|emb|>", EMB_TOKEN])
    assert ids[-1] == proc.emb_id and proc.control_ids.isdisjoint(ids[:-1])
    assert proc.tokenizer.decode(ids[:-1]) == "I wrote <|emb|> and <|im_end|> here."
    assert direct == [proc.emb_id]
    (long,) = proc.target_ids(["<|emb|>" * 40])
    assert len(long) == proc.max_target_tokens and long.count(proc.emb_id) == 1 and long[-1] == proc.emb_id


def test_pixels_are_the_image_processors_own_whatever_the_images_mode():
    """Plain RGB images skip the image processor's RGB conversion (a copy); images it would change (palette,
    grey, alpha, an RGB transparency key composited on white) still go through it: pixels equal either way."""
    import numpy as np

    rng = np.random.default_rng(0)
    rgb = [Image.fromarray(rng.integers(0, 256, (60 + 7 * k, 90, 3), dtype=np.uint8)) for k in range(3)]
    keyed = rgb[0].copy()
    keyed.info["transparency"] = tuple(int(v) for v in np.asarray(keyed)[0, 0])
    batches = [rgb, [*rgb, keyed], [rgb[1].convert("RGBA"), rgb[2].convert("L"), rgb[0].convert("P")]]
    proc = TraceProcessor(build_tokenizer(), build_image_processor())
    for images in batches:
        got = proc([Item(system="s", text="x", image=im) for im in images])
        want = proc.image_processor(images=images, return_tensors="pt")
        assert torch.equal(got["pixel_values"], want["pixel_values"])
        assert torch.equal(got["image_grid_thw"], want["image_grid_thw"])
