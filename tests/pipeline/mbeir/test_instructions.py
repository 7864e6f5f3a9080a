import pytest

from pipeline.mbeir.instructions import Instructions, format_string, query_text

TSV = ("query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4\r\n"
       "text\timage\tMSCOCO\t9\tFind me an everyday image that matches the given caption.\t"
       "Identify the image showcasing the described everyday scene.\t\t\r\n"
       "image,text\timage\tCIRR\t8\tretrieve a day-to-day image that aligns with the modification\t"
       "Find the changed image\tshow it\tpick one\textra fifth prompt\r\n"
       "\r\n"
       "image\ttext\tMSCOCO\t9\tFind an image caption describing the following everyday image.\t\t\t\t\r\n")


def test_parse_tolerates_crlf_trailing_tabs_and_prompt_counts():
    ins = Instructions.parse(TSV)
    assert ins.get(9, "text", "image") == ("Find me an everyday image that matches the given caption.",
                                           "Identify the image showcasing the described everyday scene.")
    assert len(ins.get(8, "image,text", "image")) == 5
    assert ins.get(9, "image", "text") == ("Find an image caption describing the following everyday image.",)
    assert ins.get(9, "text", "text") == ()


def test_parse_rejects_malformed_row():
    with pytest.raises(ValueError, match="line 2"):
        Instructions.parse("header\nonly\ttwo\n")


def test_choose_is_deterministic_and_uses_all_prompts():
    a, b = Instructions.parse(TSV), Instructions.parse(TSV)
    picks = [a.choose(8, "image,text", "image", f"8:{n}", seed=0) for n in range(200)]
    assert picks == [b.choose(8, "image,text", "image", f"8:{n}", seed=0) for n in range(200)]
    assert set(picks) == set(a.get(8, "image,text", "image"))
    other_seed = [a.choose(8, "image,text", "image", f"8:{n}", seed=1) for n in range(200)]
    assert other_seed != picks
    assert a.choose(3, "text", "image,text", "3:1", seed=0) is None


@pytest.mark.parametrize("raw, expected", [
    ("find a photo", "Find a photo."), ("  Find a photo.  ", "Find a photo."), ("what is it?", "What is it?"),
    ("wow!", "Wow!"), ('"quoted text"', "Quoted text."), ("line\r", "Line."), ("", ""), (None, ""),
])
def test_format_string(raw, expected):
    assert format_string(raw) == expected


def test_query_text_as_uniir_builds_it():
    ins = Instructions.parse(TSV)
    prompt = ins.choose(8, "image,text", "image", "8:6", seed=0)
    assert query_text(prompt, "make it blue") == format_string(f"{prompt} make it blue")
    assert query_text("retrieve a similar image", None) == "Retrieve a similar image."
    assert query_text("Find me an everyday image that matches the given caption.", "a red circle") == \
        "Find me an everyday image that matches the given caption. a red circle."


def test_headerless_file_keeps_first_row():
    ins = Instructions.parse(TSV.split("\r\n", 1)[1])
    assert len(ins.get(9, "text", "image")) == 2
