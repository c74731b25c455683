"""yes_no_token_ids finds every whole-word spelling of yes/Yes and no/No in a vocabulary, on
offline SentencePiece-style and byte-level-BPE-style tokenizers and on every tiny family's."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from engine import families
from engine.backends.base import yes_no_token_ids
from engine.tiny_models import build_tokenizer, resolve_model_path


def _tokens(tokenizer: PreTrainedTokenizerFast, ids: list[int]) -> set[str]:
    return set(tokenizer.convert_ids_to_tokens(ids))


def sentencepiece_style() -> PreTrainedTokenizerFast:
    """A Unigram model behind SentencePiece's Metaspace pre-tokenizer, as Llama-2's: a word
    after a space (and at the start) is spelled with "▁"."""
    pieces = ["▁Yes", "Yes", "▁yes", "▁No", "no", "▁YES", "▁Yesterday", "▁nob", "▁"]
    letters = sorted(set("".join(pieces)) - {"▁"})
    vocab = [("<unk>", 0.0)] + [(piece, -1.0) for piece in pieces] + [(c, -5.0) for c in letters]
    unigram = Tokenizer(models.Unigram(vocab, unk_id=0))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    unigram.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=unigram, unk_token="<unk>")


def byte_level_bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE, as Llama-3's and Qwen2's: a space before a word is spelled "Ġ". Its
    merges are written out, so the vocabulary holds exactly the byte alphabet and these."""
    merges = [("Ġ", "Y"), ("ĠY", "e"), ("ĠYe", "s"), ("Y", "e"), ("Ye", "s"), ("y", "e"), ("ye", "s"),
              ("ĠYes", "t"), ("Y", "E"), ("YE", "S"), ("Ġ", "n"), ("Ġn", "o"), ("Ġno", "t"),
              ("N", "o"), ("Ġ", "N"), ("ĠN", "o")]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet + [a + b for a, b in merges])}
    bpe = Tokenizer(models.BPE(vocab, merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=bpe)


def test_sentencepiece_spellings_with_and_without_the_word_start_mark():
    tokenizer = sentencepiece_style()
    vocab = tokenizer.get_vocab()
    assert tokenizer.encode(" Yes", add_special_tokens=False) == [vocab["▁Yes"]]  # the spelling answers use
    yes, no = yes_no_token_ids(tokenizer)
    assert _tokens(tokenizer, yes) == {"▁Yes", "Yes", "▁yes"}
    assert _tokens(tokenizer, no) == {"▁No", "no"}
    assert yes == sorted(yes) and no == sorted(no)


def test_byte_level_spellings_with_and_without_the_space_mark():
    tokenizer = byte_level_bpe()
    vocab = tokenizer.get_vocab()
    assert tokenizer.encode(" Yes", add_special_tokens=False) == [vocab["ĠYes"]]
    yes, no = yes_no_token_ids(tokenizer)
    # "YES", "ĠYest", "Ġnot" and the pieces merged on the way ("ĠYe", "Ġn") are other words
    assert _tokens(tokenizer, yes) == {"ĠYes", "Yes", "yes"}
    assert _tokens(tokenizer, no) == {"Ġno", "No", "ĠNo"}


def test_the_tiny_models_tokenizer_keeps_its_four_spellings_each():
    tokenizer = build_tokenizer()
    yes, no = yes_no_token_ids(tokenizer)
    assert _tokens(tokenizer, yes) == {"yes", "Ġyes", "Yes", "ĠYes"}
    assert _tokens(tokenizer, no) == {"no", "Ġno", "No", "ĠNo"}


def test_a_vocabulary_without_a_no_token_is_an_error():
    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("▁Yes", -1.0), ("▁n", -2.0), ("o", -2.0)], unk_id=0))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(ValueError, match="no/No"):
        yes_no_token_ids(PreTrainedTokenizerFast(tokenizer_object=unigram, unk_token="<unk>"))


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_every_tiny_family_has_a_whole_word_yes_and_no_where_its_answers_start(name, model_cache):
    """The ids include the token an answer after the family's generation prompt starts with."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(f"tiny:{name}", model_cache))
    yes, no = yes_no_token_ids(tokenizer)
    assert _tokens(tokenizer, yes) == {"yes", "Ġyes", "Yes", "ĠYes"}
    assert _tokens(tokenizer, no) == {"no", "Ġno", "No", "ĠNo"}
    for word, ids in (("Yes", yes), (" Yes", yes), ("no", no), (" No", no)):
        assert tokenizer.encode(word, add_special_tokens=False)[0] in ids
