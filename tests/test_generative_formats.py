"""Output formats of the generative paradigm: rendering SFT targets and parsing model output back to IOB2 tags."""
from __future__ import annotations

import dataclasses
import json
import random
import re
from typing import ClassVar

import pytest

from nerbench_core.prediction.formats import (
    FORMATS,
    InlineBrackets,
    OutputFormat,
    ParseCounts,
    Parsed,
    Span,
    SpanList,
    get_format,
    register_format,
    spans_from_tags,
    tags_from_spans,
)

TYPES = ["PER", "ORG", "LOC", "MISC"]
EU_WORDS = "EU rejects German call to boycott British lamb .".split()
EU_TAGS = "B-ORG O B-MISC O O O B-MISC O O".split()
EU_INLINE = "[EU|ORG] rejects [German|MISC] call to boycott [British|MISC] lamb ."
EU_SPANS = '[{"text": "EU", "type": "ORG"}, {"text": "German", "type": "MISC"}, {"text": "British", "type": "MISC"}]'
EU_GOLD = tuple(EU_TAGS)
FORMAT_NAMES = ["inline", "spans"]

inline = InlineBrackets()
spans = SpanList()


def only(parsed: Parsed, **expected) -> None:
    """Every count of ``parsed`` is 0 (and ``empty`` False) except those given."""
    names = ["entities", "malformed", "hallucinated", "unknown_type", "word_edits", "overlapping", "empty"]
    got = {k: getattr(parsed, k) for k in names}
    want = {k: (False if k == "empty" else 0) for k in names} | expected
    assert got == want


# ----------------------------------------------------------------------------------------------- random sentences

ASCII = ["the", "a", "Paris", "York", "New", "said", "EU", "of", ".", ",", "-", "42", "U.S.", "O'Neil", "don't"]
UNICODE = ["Zürich", "東京", "naïve", "😀", "👩‍💻", "e\u0301", "שלום", "Ωmega", "İstanbul", "ß", "Ⅻ", "\u200bzw"]
SPECIAL = [
    "[", "]", "|", "\\", "a|b", "[x]", "\\[", "\\\\", "x]y", "[[", "||", '"', "'", '"quoted"', "{}", "[]", "null",
    '{"text":', "\\n", "|ORG]", "[EU|ORG]", "\\|", "a\\", "\\]", "}]", "\"type\"", "C:\\dir", "`", "<|im_end|>",
]
RANDOM_TYPES = TYPES + ["creative-work", "B", "DATE_TIME", "Ort"]


def random_word(rng: random.Random) -> str:
    pool = rng.choice([ASCII, UNICODE, SPECIAL, None])
    if pool is not None:
        return rng.choice(pool)
    chars = []
    while len(chars) < rng.randint(1, 4):
        c = chr(rng.choice([rng.randint(0x21, 0x7E), rng.randint(0xA1, 0x2FFF), rng.randint(0x1F300, 0x1F64F)]))
        if not c.isspace():
            chars.append(c)
    return "".join(chars)


def random_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    # a small per-sentence vocabulary so the same word (and the same span text) often repeats
    vocab = [random_word(rng) for _ in range(rng.randint(1, 6))]
    n = rng.randint(1, 14)
    words = [rng.choice(vocab) for _ in range(n)]
    tags: list[str] = []
    while len(tags) < n:
        if rng.random() < 0.4:
            typ = rng.choice(RANDOM_TYPES)
            length = min(rng.randint(1, 3), n - len(tags))
            tags += [f"B-{typ}"] + [f"I-{typ}"] * (length - 1)
        else:
            tags.append("O")
    return words, tags


# ----------------------------------------------------------------------------------------------- rendering


def test_render_matches_the_documented_examples():
    assert inline.render(EU_WORDS, EU_TAGS) == EU_INLINE
    assert spans.render(EU_WORDS, EU_TAGS) == EU_SPANS
    assert json.loads(spans.render(EU_WORDS, EU_TAGS)) == [
        {"text": "EU", "type": "ORG"}, {"text": "German", "type": "MISC"}, {"text": "British", "type": "MISC"}]


def test_render_multiword_entities_and_no_entities():
    words = "New York Times reported".split()
    tags = ["B-ORG", "I-ORG", "I-ORG", "O"]
    assert inline.render(words, tags) == "[New York Times|ORG] reported"
    assert spans.render(words, tags) == '[{"text": "New York Times", "type": "ORG"}]'
    assert inline.render(words, ["O"] * 4) == "New York Times reported"
    assert spans.render(words, ["O"] * 4) == "[]"


def test_inline_escaping_rule_backslash_before_brackets_pipes_and_backslashes():
    words = ["a|b", "[x]", "C:\\", "\\[", "東京"]
    tags = ["B-X", "I-X", "O", "B-Y", "O"]
    assert inline.render(words, tags) == "[a\\|b \\[x\\]|X] C:\\\\ [\\\\\\[|Y] 東京"
    assert inline.parse(inline.render(words, tags), words, ["X", "Y"]).tags == tuple(tags)


def test_inline_lone_backslash_before_an_ordinary_character_is_literal():
    words = ["C:\\dir", "is", "Zürich\\"]
    # the model did not double the backslashes: before an ordinary character or at the end they are themselves
    p = inline.parse("[C:\\dir|LOC] is Zürich\\", words, ["LOC"])
    assert p.tags == ("B-LOC", "O", "O")
    only(p, entities=1)
    # but before [ ] | a backslash always escapes: an undoubled one there leaves the bracket unclosed
    p = inline.parse("[C:\\dir|LOC] is [Zürich\\|LOC]", words, ["LOC"])
    assert p.tags == ("B-LOC", "O", "O")
    only(p, entities=1, malformed=1, word_edits=1)


def test_spans_render_keeps_unicode_unescaped():
    words = ["Zürich", "and", "東京", "😀"]
    out = spans.render(words, ["B-LOC", "O", "B-LOC", "B-MISC"])
    assert "Zürich" in out and "東京" in out and "😀" in out
    assert json.loads(out)[1] == {"text": "東京", "type": "LOC"}


def test_adjacent_entities_of_one_type_stay_separate():
    words = ["Paris", "Berlin", "Rome"]
    tags = ["B-LOC", "B-LOC", "I-LOC"]
    assert inline.render(words, tags) == "[Paris|LOC] [Berlin Rome|LOC]"
    for fmt in (inline, spans):
        assert fmt.parse(fmt.render(words, tags), words, TYPES).tags == tuple(tags)


def test_i_tag_after_o_is_read_as_a_start_like_conlleval():
    assert spans_from_tags(["O", "I-PER", "I-PER", "I-LOC"]) == [Span(1, 3, "PER"), Span(3, 4, "LOC")]
    words = ["Mr", "John", "Smith", "Paris"]
    p = inline.parse(inline.render(words, ["O", "I-PER", "I-PER", "I-LOC"]), words, TYPES)
    assert p.tags == ("O", "B-PER", "I-PER", "B-LOC")


def test_tags_from_spans_writes_b_then_i_and_o_elsewhere():
    assert tags_from_spans(5, [Span(0, 1, "ORG"), Span(2, 5, "PER")]) == ("B-ORG", "O", "B-PER", "I-PER", "I-PER")


@pytest.mark.parametrize("name", FORMAT_NAMES)
@pytest.mark.parametrize(
    "words, tags, message",
    [
        (["a", "b"], ["O"], "2 words but 1 tags"),
        (["a", ""], ["O", "O"], "non-empty"),
        (["New York"], ["B-LOC"], "without whitespace"),
        (["a"], ["X-PER"], "is not O"),
        (["a"], ["B-"], "is not O"),
    ],
)
def test_render_refuses_invalid_sentences(name, words, tags, message):
    with pytest.raises(ValueError, match=message):
        get_format(name).render(words, tags)


def test_inline_render_refuses_types_it_cannot_write():
    with pytest.raises(ValueError, match="cannot be written inline"):
        inline.render(["a"], ["B-A|B"])
    with pytest.raises(ValueError, match="cannot be written inline"):
        inline.render(["a"], ["B-A]"])


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_instruction_names_every_type(name):
    text = get_format(name).instruction(["PER", "ORG", "creative-work"])
    assert "PER, ORG, creative-work" in text
    assert 1 <= len(re.findall(r"[.!?](?:\s|$)", text)) <= 2  # one or two sentences


# ----------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_round_trip_on_random_sentences(name):
    fmt = get_format(name)
    rng = random.Random(1234)
    for _ in range(600):
        words, tags = random_sentence(rng)
        out = fmt.render(words, tags)
        p = fmt.parse(out, words, RANDOM_TYPES)
        assert p.tags == tuple(tags), (words, tags, out)
        only(p, entities=len(spans_from_tags(tags)))


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_round_trip_on_unicode_and_special_words(name):
    fmt = get_format(name)
    words = ["Zürich", "東京", "naïve", "😀", "[", "]", "|", "\\", "a|b", '"x"', "'", "\\[", "x]y", "{}", "[EU|ORG]"]
    tags = ["B-LOC", "B-LOC", "O", "B-MISC", "B-MISC", "I-MISC", "O", "B-PER", "I-PER", "B-ORG", "O", "B-LOC",
            "I-LOC", "I-LOC", "B-ORG"]
    p = fmt.parse(fmt.render(words, tags), words, TYPES)
    assert p.tags == tuple(tags)
    only(p, entities=8)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_round_trip_tolerates_a_trailing_newline_and_surrounding_whitespace(name):
    fmt = get_format(name)
    p = fmt.parse("  " + fmt.render(EU_WORDS, EU_TAGS) + "\n", EU_WORDS, TYPES)
    assert p.tags == EU_GOLD
    only(p, entities=3)


# ----------------------------------------------------------------------------------------------- repeated strings

REPEATS = [
    # (words, tags): both occurrences entities; only the first; only the second; a repeated multiword span
    ("Paris beat Paris".split(), ["B-ORG", "O", "B-LOC"]),
    ("Paris is Paris".split(), ["B-LOC", "O", "O"]),
    ("Paris is Paris".split(), ["O", "O", "B-LOC"]),
    ("Paris and Paris and Paris".split(), ["O", "O", "B-LOC", "O", "B-LOC"]),
    ("New York and New York".split(), ["O", "O", "O", "B-LOC", "I-LOC"]),
    ("New York New York".split(), ["B-LOC", "I-LOC", "B-LOC", "I-LOC"]),
    ("a a a".split(), ["O", "B-X", "I-X"]),
]


@pytest.mark.parametrize("name", FORMAT_NAMES)
@pytest.mark.parametrize("words, tags", REPEATS)
def test_repeated_strings_round_trip(name, words, tags):
    fmt = get_format(name)
    p = fmt.parse(fmt.render(words, tags), words, TYPES + ["X"])
    assert p.tags == tuple(tags)
    only(p, entities=len(spans_from_tags(tags)))


def test_spans_write_occurrence_only_for_repeated_text():
    out = json.loads(spans.render("Paris is Paris , not Lyon".split(), ["O", "O", "B-LOC", "O", "O", "B-LOC"]))
    assert out == [{"text": "Paris", "type": "LOC", "occurrence": 2}, {"text": "Lyon", "type": "LOC"}]
    assert "occurrence" not in spans.render(EU_WORDS, EU_TAGS)


def test_spans_without_occurrence_are_placed_by_order():
    words = "Paris , Lyon , Paris and Paris".split()
    # two bare "Paris" spans take the first two unused occurrences, in order
    p = spans.parse('[{"text": "Paris", "type": "LOC"}, {"text": "Paris", "type": "LOC"}]', words, TYPES)
    assert p.tags == ("B-LOC", "O", "O", "O", "B-LOC", "O", "O")
    only(p, entities=2)
    # the search starts after the previous span: "Paris" after "Lyon" is the one at 4
    p = spans.parse('[{"text": "Lyon", "type": "LOC"}, {"text": "Paris", "type": "LOC"}]', words, TYPES)
    assert p.tags == ("O", "O", "B-LOC", "O", "B-LOC", "O", "O")
    # nothing after the previous span: the search starts over from the start of the sentence
    p = spans.parse('[{"text": "and", "type": "MISC"}, {"text": "Lyon", "type": "LOC"}]', words, TYPES)
    assert p.tags == ("O", "O", "B-LOC", "O", "O", "B-MISC", "O")
    only(p, entities=2)


def test_spans_occurrence_picks_the_given_one():
    words = "Paris , Paris , Paris".split()
    p = spans.parse('[{"text": "Paris", "type": "LOC", "occurrence": 3}]', words, TYPES)
    assert p.tags == ("O", "O", "O", "O", "B-LOC")
    only(p, entities=1)


# ----------------------------------------------------------------------------------------------- spans: bad output


def test_spans_hallucinated_text_is_dropped_and_counted():
    out = ('[{"text": "EU", "type": "ORG"}, {"text": "Obama", "type": "PER"}, {"text": "Germ", "type": "MISC"}, '
           '{"text": "british", "type": "MISC"}, {"text": "British lamb", "type": "MISC"}]')
    p = spans.parse(out, EU_WORDS, TYPES)
    assert p.tags == ("B-ORG", "O", "O", "O", "O", "O", "B-MISC", "I-MISC", "O")
    only(p, entities=2, hallucinated=3)


def test_spans_occurrence_past_the_last_is_hallucinated():
    p = spans.parse('[{"text": "Paris", "type": "LOC", "occurrence": 3}]', "Paris or Paris".split(), TYPES)
    assert p.tags == ("O", "O", "O")
    only(p, hallucinated=1)


@pytest.mark.parametrize(
    "out",
    [
        '[{"text": "EU", "type": "ORG"}, {"text": "German" "type": "MISC"}]',  # missing comma
        '[{"text": "EU", "type": "ORG"}, {"text": "Ger',  # truncated generation
        "[{'text': 'EU', 'type': 'ORG'}]",  # Python, not JSON
        "EU (ORG), German (MISC)",
        "Entities: []",  # prose before the JSON
        "[",
    ],
)
def test_spans_invalid_json_is_one_malformed_piece(out):
    p = spans.parse(out, EU_WORDS, TYPES)
    assert p.tags == ("O",) * len(EU_WORDS)
    only(p, malformed=1)


@pytest.mark.parametrize("out", ['{"text": "EU", "type": "ORG"}', '"EU"', "42", "null", '{"entities": []}'])
def test_spans_json_that_is_not_a_list_is_malformed(out):
    p = spans.parse(out, EU_WORDS, TYPES)
    assert p.tags == ("O",) * len(EU_WORDS)
    only(p, malformed=1)


def test_spans_bad_items_are_malformed_and_good_ones_kept():
    items = [
        {"text": "EU", "type": "ORG"},
        "German",  # not an object
        ["British", "MISC"],
        {"text": "German"},  # no type
        {"type": "MISC"},  # no text
        {"text": 7, "type": "MISC"},
        {"text": "German", "type": None},
        {"text": "   ", "type": "MISC"},  # empty text
        {"text": "German", "type": ""},  # empty type
        {"text": "lamb", "type": "MISC", "occurrence": 0},
        {"text": "lamb", "type": "MISC", "occurrence": "1"},
        {"text": "lamb", "type": "MISC", "occurrence": True},
        {"text": "British", "type": "MISC", "note": "extra keys are ignored"},
    ]
    p = spans.parse(json.dumps(items), EU_WORDS, TYPES)
    assert p.tags == ("B-ORG", "O", "O", "O", "O", "O", "B-MISC", "O", "O")
    only(p, entities=2, malformed=11)


def test_spans_unknown_types_are_counted_case_sensitively():
    out = ('[{"text": "EU", "type": "org"}, {"text": "German", "type": "NATIONALITY"}, '
           '{"text": "British", "type": " MISC "}]')
    p = spans.parse(out, EU_WORDS, TYPES)
    assert p.tags == ("O", "O", "O", "O", "O", "O", "B-MISC", "O", "O")
    only(p, entities=1, unknown_type=2)


def test_spans_overlapping_an_earlier_span_are_dropped():
    words = "New York Times reported".split()
    out = ('[{"text": "New York Times", "type": "ORG"}, {"text": "York", "type": "LOC"}, '
           '{"text": "New York Times", "type": "ORG"}, {"text": "Times reported", "type": "MISC"}, '
           '{"text": "New York", "type": "LOC", "occurrence": 1}]')
    p = spans.parse(out, words, TYPES)
    assert p.tags == ("B-ORG", "I-ORG", "I-ORG", "O")
    only(p, entities=1, overlapping=4)


@pytest.mark.parametrize("tail", ["</s>", "<|im_end|>", "<|eot_id|>\n\nassistant: anything [", '\n[{"text": "lamb"}]'])
def test_spans_text_after_the_json_is_ignored(tail):
    p = spans.parse(EU_SPANS + tail, EU_WORDS, TYPES)
    assert p.tags == EU_GOLD
    only(p, entities=3)


def test_spans_text_whitespace_is_normalised_before_matching():
    p = spans.parse('[{"text": " New\\n York  ", "type": "LOC"}]', "in New York".split(), TYPES)
    assert p.tags == ("O", "B-LOC", "I-LOC")
    only(p, entities=1)


# ----------------------------------------------------------------------------------------------- inline: bad output


def test_inline_nested_brackets_are_malformed_and_words_still_align():
    words = "The New York Times hired EU staff".split()
    p = inline.parse("The [[New York|LOC] Times|ORG] hired [EU|ORG] staff", words, TYPES)
    assert p.tags == ("O", "O", "O", "O", "O", "B-ORG", "O")
    only(p, entities=1, malformed=1)


def test_inline_unclosed_bracket_is_malformed_and_earlier_entities_kept():
    p = inline.parse("[EU|ORG] rejects [German call to boycott British lamb .", EU_WORDS, TYPES)
    assert p.tags == ("B-ORG",) + ("O",) * 8
    only(p, entities=1, malformed=1)
    # a type that runs into the next word never closed either; the words after it are read as words
    p = inline.parse("[EU|ORG rejects [German|MISC] call to boycott [British|MISC] lamb .", EU_WORDS, TYPES)
    assert p.tags == ("O", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O")
    only(p, entities=2, malformed=1)


def test_inline_stray_closing_bracket_is_malformed():
    p = inline.parse("[EU|ORG] rejects ] [German|MISC] call to boycott [British|MISC] lamb . ]", EU_WORDS, TYPES)
    assert p.tags == EU_GOLD
    only(p, entities=3, malformed=2)


@pytest.mark.parametrize(
    "out",
    [
        "[EU] rejects [German|MISC] call to boycott [British|MISC] lamb .",  # no |TYPE
        "[EU|] rejects [German|MISC] call to boycott [British|MISC] lamb .",  # empty type
        "[EU|ORG|X] rejects [German|MISC] call to boycott [British|MISC] lamb .",  # two pipes
    ],
)
def test_inline_missing_or_bad_type_is_malformed(out):
    p = inline.parse(out, EU_WORDS, TYPES)
    assert p.tags == ("O", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O")
    only(p, entities=2, malformed=1)


def test_inline_empty_span_text_is_malformed():
    p = inline.parse("[|ORG] [EU|ORG] rejects German call to boycott British lamb .", EU_WORDS, TYPES)
    assert p.tags == ("B-ORG",) + ("O",) * 8
    only(p, entities=1, malformed=1)


def test_inline_unknown_types_are_counted_case_sensitively():
    p = inline.parse("[EU|org] rejects [German|NATIONALITY] call to boycott [British|MISC] lamb .", EU_WORDS, TYPES)
    assert p.tags == ("O", "O", "O", "O", "O", "O", "B-MISC", "O", "O")
    only(p, entities=1, unknown_type=2)


def test_inline_tolerates_whitespace_inside_the_brackets_around_the_type():
    p = inline.parse("[EU| ORG ] rejects  [German|MISC]\ncall to boycott [British|MISC ] lamb .", EU_WORDS, TYPES)
    assert p.tags == EU_GOLD
    only(p, entities=3)


def test_inline_changed_word_outside_entities_keeps_them():
    p = inline.parse("[EU|ORG] refuses [German|MISC] call to boycott [British|MISC] lamb .", EU_WORDS, TYPES)
    assert p.tags == EU_GOLD
    only(p, entities=3, word_edits=1)


def test_inline_changed_word_inside_an_entity_drops_only_that_entity():
    p = inline.parse("[EU|ORG] rejects [French|MISC] call to boycott [British|MISC] lamb .", EU_WORDS, TYPES)
    assert p.tags == ("B-ORG", "O", "O", "O", "O", "O", "B-MISC", "O", "O")
    only(p, entities=2, hallucinated=1, word_edits=1)


def test_inline_dropped_word_keeps_entities_elsewhere():
    p = inline.parse("[EU|ORG] rejects [German|MISC] to boycott [British|MISC] lamb .", EU_WORDS, TYPES)
    assert p.tags == EU_GOLD
    only(p, entities=3, word_edits=1)


def test_inline_dropped_word_inside_an_entity_drops_it():
    words = "The New York Times hired EU staff".split()
    p = inline.parse("The [New Times|ORG] hired [EU|ORG] staff", words, TYPES)
    assert p.tags == ("O", "O", "O", "O", "O", "B-ORG", "O")
    only(p, entities=1, hallucinated=1, word_edits=1)


def test_inline_inserted_words_keep_entities_elsewhere():
    p = inline.parse("[EU|ORG] strongly rejects [German|MISC] call to boycott [British|MISC] lamb .", EU_WORDS, TYPES)
    assert p.tags == EU_GOLD
    only(p, entities=3, word_edits=1)
    # an inserted entity is not in the sentence: it is hallucinated as well as an edit
    p = inline.parse(EU_INLINE + " says [Obama|PER]", EU_WORDS, TYPES)
    assert p.tags == EU_GOLD
    only(p, entities=3, hallucinated=1, word_edits=1)


def test_inline_several_edits_are_counted_one_per_edit_block():
    p = inline.parse("[EU|ORG] refuses [German|MISC] to boycott [British|MISC] beef . </s>", EU_WORDS, TYPES)
    assert p.tags == EU_GOLD
    only(p, entities=3, word_edits=4)


def test_inline_repeated_word_alignment_is_deterministic():
    words = "Paris is Paris".split()
    out = "Paris is really [Paris|LOC]"
    first = inline.parse(out, words, TYPES)
    assert first == inline.parse(out, words, TYPES)
    assert first.tags == ("O", "O", "B-LOC")
    only(first, entities=1, word_edits=1)


# ----------------------------------------------------------------------------------------------- both formats


@pytest.mark.parametrize("name", FORMAT_NAMES)
@pytest.mark.parametrize("out", ["", "   ", "\n\t \n"])
def test_empty_output_is_all_o_and_flagged(name, out):
    p = get_format(name).parse(out, EU_WORDS, TYPES)
    assert p.tags == ("O",) * len(EU_WORDS)
    assert p.empty is True
    only(p, empty=True)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_no_entities_output_is_not_empty(name):
    fmt = get_format(name)
    p = fmt.parse(fmt.render(EU_WORDS, ["O"] * len(EU_WORDS)), EU_WORDS, TYPES)
    assert p.tags == ("O",) * len(EU_WORDS)
    only(p)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_parse_never_raises_and_always_gives_one_valid_tag_per_word(name):
    fmt = get_format(name)
    rng = random.Random(99)
    alphabet = list('[]|\\{}":, ') + ["EU", "ORG", "MISC", "German", "text", "type", "occurrence", "1", "\n", "東京"]
    for _ in range(1500):
        words, tags = random_sentence(rng)
        if rng.random() < 0.5:  # mutate a real target
            out = list(fmt.render(words, tags))
            for _ in range(rng.randint(1, 4)):
                out.insert(rng.randint(0, len(out)), rng.choice(alphabet))
                if out and rng.random() < 0.5:
                    del out[rng.randrange(len(out))]
            out = "".join(out)
        else:
            out = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        p = fmt.parse(out, words, RANDOM_TYPES)
        assert len(p.tags) == len(words)
        for s in spans_from_tags(p.tags):  # every tag is O/B-/I- of a known type, each span starts with B-
            assert s.type in RANDOM_TYPES and p.tags[s.start].startswith("B-")
        assert p.entities == len(spans_from_tags(p.tags))
        assert min(p.malformed, p.hallucinated, p.unknown_type, p.word_edits, p.overlapping) >= 0


# ----------------------------------------------------------------------------------------------- counts


def test_parse_counts_sum_across_sentences_and_are_json_friendly():
    a = inline.parse("[EU|org] rejects [German|MISC] call to boycott [British|MISC] lamb . ]", EU_WORDS, TYPES)
    b = spans.parse('[{"text": "Obama", "type": "PER"}, 3]', EU_WORDS, TYPES)
    c = spans.parse("", EU_WORDS, TYPES)
    total = ParseCounts.total([a, b, c])
    assert total == ParseCounts(sentences=3, entities=2, malformed=2, hallucinated=1, unknown_type=1, empty=1)
    assert total.dropped == 4
    assert sum((p.counts() for p in (a, b, c)), ParseCounts()) == total
    assert sum(p.counts() for p in (a, b, c)) == total  # sum() from its default 0
    assert a.counts() + b + c == total
    assert ParseCounts.total([total, ParseCounts(sentences=1, word_edits=2)]).word_edits == 2
    d = total.as_dict()
    assert d == {"sentences": 3, "entities": 2, "malformed": 2, "hallucinated": 1, "unknown_type": 1,
                 "word_edits": 0, "overlapping": 0, "empty": 1}
    assert ParseCounts.from_dict(json.loads(json.dumps(d))) == total
    assert ParseCounts.from_dict({"entities": 5}) == ParseCounts(entities=5)
    with pytest.raises(ValueError, match="unknown parse count keys"):
        ParseCounts.from_dict({"entites": 5})
    assert ParseCounts.total([]) == ParseCounts()


def test_parsed_and_counts_are_frozen():
    p = inline.parse(EU_INLINE, EU_WORDS, TYPES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.entities = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.counts().entities = 0  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------- registry


def test_registry_knows_both_formats():
    assert FORMATS == {"inline": InlineBrackets, "spans": SpanList}
    assert isinstance(get_format("inline"), InlineBrackets) and get_format("inline").name == "inline"
    assert isinstance(get_format("spans"), SpanList) and get_format("spans").name == "spans"


def test_get_format_unknown_name_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown output format 'json'.*inline, spans"):
        get_format("json")


def test_new_formats_register_by_subclassing():
    @dataclasses.dataclass(frozen=True)
    class Upper(InlineBrackets):
        name: ClassVar[str] = "inline-upper"

        def render(self, words, tags):
            return super().render(words, tags).upper()

    try:
        assert register_format(Upper) is Upper
        fmt = get_format("inline-upper")
        assert fmt.render(["eu"], ["B-ORG"]) == "[EU|ORG]"
        assert fmt.parse("[EU|ORG]", ["EU"], ["ORG"]).tags == ("B-ORG",)

        @dataclasses.dataclass(frozen=True)
        class Clash(SpanList):
            name: ClassVar[str] = "inline"

        with pytest.raises(ValueError, match="already registered"):
            register_format(Clash)
        with pytest.raises(TypeError):
            register_format(dict)  # type: ignore[arg-type]
    finally:
        FORMATS.pop("inline-upper", None)
    assert set(FORMATS) == {"inline", "spans"}


def test_output_format_is_abstract():
    with pytest.raises(TypeError):
        OutputFormat()  # type: ignore[abstract]
