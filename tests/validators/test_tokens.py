import pickle

import pytest

from validators.tokens import Tokenizer, approx_count, get_tokenizer

PARAGRAPHS = [
    # Not the calibration paragraphs: a check that the documented ~1.3 tokens/word holds on fresh text.
    "The reference photo shows a white ceramic mug on a wooden desk next to a laptop. The requested change is to "
    "show the same mug filled with coffee and placed on a kitchen counter, so the mug's shape and white colour "
    "stay the same while the setting and its contents change.",
    "The question asks when this stadium was opened. The curved white roof, the running track and the Olympic "
    "rings identify the Olympiastadion in Berlin, which was built for the 1936 Summer Olympics and later "
    "renovated for the football World Cup.",
]


@pytest.mark.parametrize("text", PARAGRAPHS)
def test_approximation_gives_about_1_3_tokens_per_word(text):
    ratio = approx_count(text) / len(text.split())
    assert 1.15 <= ratio <= 1.45


def test_approximation_pieces():
    assert approx_count("") == 0
    assert approx_count("red dress") == 2
    assert approx_count("1936") == 4  # digits one by one, as Qwen's BPE splits them
    assert approx_count("dress, red.") == 4
    assert approx_count("characteristically") > 2  # long words cost more than one token


def test_none_spec_is_the_approximation():
    tok = Tokenizer.from_spec(None)
    assert tok.approximate
    assert tok.count(PARAGRAPHS[0]) == approx_count(PARAGRAPHS[0])


def test_local_hugging_face_tokenizer(word_tokenizer_dir):
    tok = Tokenizer.from_spec(word_tokenizer_dir)
    assert not tok.approximate
    assert tok.count("the dog runs on the beach") == 6
    assert tok.count("") == 0


def test_pickles_as_its_spec_and_reloads(word_tokenizer_dir):
    tok = Tokenizer.from_spec(word_tokenizer_dir)
    tok.count("warm it up")
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.spec == word_tokenizer_dir
    assert clone.count("one two three four") == 4


def test_missing_tokenizer_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="teacher tokenizer"):
        Tokenizer.from_spec(str(tmp_path / "no-such-tokenizer"))


def test_get_tokenizer_loads_once(word_tokenizer_dir):
    assert get_tokenizer(word_tokenizer_dir) is get_tokenizer(word_tokenizer_dir)
