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


def document(*docs: list[str]) -> list[Sentence]:
    """Sentences of documents, each written "word/TAG word ..." (tag O where none is given)."""
    out = []
    for d, doc in enumerate(docs):
        for text in doc:
            words, tags = zip(*[w.split("/") if "/" in w else (w, "O") for w in text.split()])
            out.append(Sentence(words, tags, doc=d))
    return out


def pieces_of(tok, e) -> list[str]:
    return tok.convert_ids_to_tokens(e.input_ids)


def test_document_context_stops_at_the_document_edges(tmp_path):
    tok = bert_tokenizer(tmp_path)
    sentences = document(["John/B-PER said", "Mary/B-PER won", "Paris/B-LOC ."], ["Oslo/B-LOC said", "Lima won"])
    out = WordEncoder(tok, max_length=64, context=2).encode(sentences, LABELS)
    assert [pieces_of(tok, e) for e in out.examples] == [
        ["[CLS]", "John", "said", "Mary", "won", "Paris", ".", "[SEP]"],  # a document's first: context after only
        ["[CLS]", "John", "said", "Mary", "won", "Paris", ".", "[SEP]"],
        ["[CLS]", "John", "said", "Mary", "won", "Paris", ".", "[SEP]"],  # its last: not the next document's first
        ["[CLS]", "Oslo", "said", "Lima", "won", "[SEP]"],  # the next one's first: not the previous one's last
        ["[CLS]", "Oslo", "said", "Lima", "won", "[SEP]"],
    ]
    for e, s in zip(out.examples, sentences):
        # first_tokens point at the target sentence's own words, and only they carry labels
        assert [pieces_of(tok, e)[i] for i in e.first_tokens] == list(s.words)
        assert [i for i, label in enumerate(e.labels) if label != IGNORE] == e.first_tokens
        assert [e.labels[i] for i in e.first_tokens] == [LABELS[t] for t in s.tags]
    assert [e.first_tokens for e in out.examples] == [[1, 2], [3, 4], [5, 6], [1, 2], [3, 4]]


def test_document_context_takes_at_most_n_sentences_on_each_side(tmp_path):
    tok = bert_tokenizer(tmp_path)
    sentences = document(["John", "Mary", "Paris", "Oslo", "Lima"])
    out = WordEncoder(tok, max_length=64, context=1).encode(sentences, LABELS)
    assert pieces_of(tok, out.examples[2]) == ["[CLS]", "Mary", "Paris", "Oslo", "[SEP]"]
    assert out.examples[2].first_tokens == [2]
    no_context = WordEncoder(tok, max_length=64).encode(sentences, LABELS)
    assert pieces_of(tok, no_context.examples[2]) == ["[CLS]", "Paris", "[SEP]"]


def test_document_context_is_trimmed_to_max_length_keeping_the_nearest_tokens(tmp_path):
    tok = bert_tokenizer(tmp_path)
    before, after = "John Mary Ahmed Li Olga Pedro", "Smith Jones Khan Wei Petrova Garcia"
    sentences = document([before, "Paris/B-LOC", after], ["Oslo", "Lima/B-LOC", after])
    out = WordEncoder(tok, max_length=9, context=1).encode(sentences, LABELS)  # room for 6 context tokens
    middle, short_left = out.examples[1], out.examples[4]
    # half the room on each side, the tokens nearest the sentence
    assert pieces_of(tok, middle) == ["[CLS]", "Li", "Olga", "Pedro", "Paris", "Smith", "Jones", "Khan", "[SEP]"]
    assert middle.first_tokens == [4] and middle.labels == [IGNORE] * 4 + [LABELS["B-LOC"]] + [IGNORE] * 4
    # a side that needs less leaves the rest of the room to the other
    assert pieces_of(tok, short_left) == ["[CLS]", "Oslo", "Lima", "Smith", "Jones", "Khan", "Wei", "Petrova", "[SEP]"]
    assert short_left.first_tokens == [2]
    assert all(len(e.input_ids) <= 9 for e in out.examples)


def test_a_window_that_fills_max_length_takes_no_context(tmp_path):
    tok = bert_tokenizer(tmp_path)
    sentences = document(["Tokyo", "John Smiths Paris Oslo Lima", "Berlin"])
    out = WordEncoder(tok, max_length=6, context=1).encode(sentences, LABELS)  # 4 tokens between [CLS] and [SEP]
    windows = [e for e in out.examples if e.sentence == 1]
    assert [e.word_start for e in windows] == [0, 3] and out.windowed_words == 2
    assert pieces_of(tok, windows[0]) == ["[CLS]", "John", "Smith", "##s", "Paris", "[SEP]"]  # full: no context
    # a shorter window: the neighbouring sentences fill the room it leaves
    assert pieces_of(tok, windows[1]) == ["[CLS]", "Tokyo", "Oslo", "Lima", "Berlin", "[SEP]"]
    assert windows[1].first_tokens == [2, 3]
