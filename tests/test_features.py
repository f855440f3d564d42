from nerbench_core.data import Sentence
from nerbench_core.features import IGNORE, WordEncoder

from .helpers import bert_tokenizer, bpe_tokenizer

LABELS = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3}


def test_first_subtoken_carries_the_label_bert(tmp_path):
    tok = bert_tokenizer(tmp_path)
    enc = WordEncoder(tok, max_length=32)
    s = Sentence(("Smiths", "Paris", "Oslo"), ("B-PER", "B-LOC", "O"))
    out = enc.encode([s], LABELS)
    (e,) = out.examples
    pieces = tok.convert_ids_to_tokens(e.input_ids)
    assert pieces == ["[CLS]", "Smith", "##s", "Paris", "Oslo", "[SEP]"]
    assert e.labels == [IGNORE, 1, IGNORE, 3, 0, IGNORE]
    assert e.first_tokens == [1, 3, 4]
    assert out.windowed_words == 0


def test_byte_level_words_get_their_leading_space(tmp_path):
    tok = bpe_tokenizer(tmp_path)
    enc = WordEncoder(tok, max_length=32)
    (e,) = enc.encode([Sentence(("John", "Smith", "Paris"), ("B-PER", "I-PER", "B-LOC"))], LABELS).examples
    pieces = tok.convert_ids_to_tokens(e.input_ids)
    assert all(pieces[i].startswith("Ġ") for i in e.first_tokens), pieces  # as inside running text
    assert [e.labels[i] for i in e.first_tokens] == [1, 2, 3]
    assert sum(l != IGNORE for l in e.labels) == 3


def test_long_sentences_are_windowed_and_every_word_is_kept(tmp_path):
    tok = bert_tokenizer(tmp_path)
    enc = WordEncoder(tok, max_length=6)  # [CLS] + 4 pieces + [SEP]
    words = ("John", "Smiths", "Paris", "Oslo", "Lima", "Tokyo", "Berlin")
    tags = ("B-PER", "I-PER", "B-LOC", "O", "B-LOC", "O", "B-LOC")
    out = enc.encode([Sentence(words, tags)], LABELS)
    assert all(len(e.input_ids) <= 6 for e in out.examples)
    # "Smiths" is two pieces: John Smiths Paris fill the first window, the rest the second
    assert [e.word_start for e in out.examples] == [0, 3]
    covered = [e.word_start + j for e in out.examples for j in range(len(e.first_tokens))]
    assert covered == list(range(len(words)))
    assert out.windowed_words == 4  # words past the first window, all still trained on and scored


def test_a_word_the_tokenizer_erases_still_gets_a_position(tmp_path):
    tok = bert_tokenizer(tmp_path)
    enc = WordEncoder(tok, max_length=16)
    (e,) = enc.encode([Sentence(("John", "\u200b", "Paris"), ("B-PER", "O", "B-LOC"))], LABELS).examples
    assert len(e.first_tokens) == 3 and e.input_ids[e.first_tokens[1]] == tok.unk_token_id
