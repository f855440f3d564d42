"""Output formats for the generative paradigm: what a decoder LLM is taught to write, and how it is read back.

A decoder model is fine-tuned (SFT) to write the entities of a sentence. ``OutputFormat.render`` makes the
training target from the sentence's words and IOB2 tags; ``OutputFormat.parse`` turns whatever the model wrote
back into one IOB2 tag per word, so the generative paradigm is scored by the same seqeval path as token
classification, on the same words. ``render`` then ``parse`` is the identity on any valid IOB2 sentence.

Parsing never raises on model output. What could not be used is dropped and counted in ``Parsed``, one count
per dropped piece, in the first category that applies, checked in this order:
``malformed`` (not readable as the format), ``unknown_type`` (type not among ``types``; types match
case-sensitively, surrounding whitespace ignored), ``hallucinated`` (the span's text is not in the sentence, or
in the inline format is not aligned to it), ``overlapping`` (overlaps a span already placed). The inline format
also counts ``word_edits``: changed, dropped or inserted words, one per edit block.

Formats (``FORMATS``, ``get_format``):

``inline`` (``InlineBrackets``): the sentence, words joined by single spaces, each entity wrapped as
``[text|TYPE]``: ``[EU|ORG] rejects [German|MISC] call to boycott [British|MISC] lamb .``
Escaping rule: inside words, each of the four characters ``\\ [ ] |`` is written with a backslash before it
(``a|b`` -> ``a\\|b``, ``[x]`` -> ``\\[x\\]``, ``C:\\`` -> ``C:\\\\``). When reading, a backslash before one of
those four characters makes it literal; any other backslash (before another character, or at the end) is itself
a literal backslash, so a model that forgets to double a lone backslash is still read right (but an undoubled
one before ``[``, ``]`` or ``|`` escapes it). Unescaped ``[``, ``]`` and ``|`` (inside a bracket) also end a word.
Parsing aligns the written words to the sentence (``difflib.SequenceMatcher``, ``autojunk=False``); a span is kept
only when all its words fall in "equal" blocks, contiguously. Strip special tokens (``</s>``) before parsing: one
glued to the last word counts as an edit of that word.

``spans`` (``SpanList``): a JSON list of ``{"text": ..., "type": ...}`` in sentence order, ``[]`` when there is
none: ``[{"text": "EU", "type": "ORG"}, {"text": "German", "type": "MISC"}, {"text": "British", "type": "MISC"}]``.
When the entity's text occurs more than once in the sentence, the object also carries ``"occurrence": n``
(1-based, counting every place the word sequence starts in the sentence), which says which one is meant; without
it (a model may leave it out) a span is placed at the first free occurrence at or after the end of the previous
placed span, else at the first free one from the start of the sentence. The JSON must start at the output's first
non-whitespace character; anything after it (an end token, more text) is ignored. Output that is not JSON, or is
JSON but not a list, is one malformed piece and gives no entities.

Extension: subclass ``OutputFormat`` (a frozen dataclass with a class-level ``name``) and decorate it with
``@register_format``.
"""
from __future__ import annotations

import abc
import difflib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Iterable, Mapping, Sequence

__all__ = [
    "FORMATS",
    "InlineBrackets",
    "OutputFormat",
    "ParseCounts",
    "Parsed",
    "Span",
    "SpanList",
    "get_format",
    "register_format",
    "spans_from_tags",
    "tags_from_spans",
]


# ---------------------------------------------------------------------------------------------------------------
# Spans and tags


@dataclass(frozen=True)
class Span:
    """An entity over words ``start`` (inclusive) to ``end`` (exclusive)."""

    start: int
    end: int
    type: str


def spans_from_tags(tags: Sequence[str]) -> list[Span]:
    """Entity spans of an IOB2 tag sequence, in order.

    ``B-X`` starts a span; ``I-X`` continues a span of type X, or starts one after ``O`` or another type (as
    conlleval reads it). Raises ``ValueError`` for a tag that is not ``O``, ``B-X`` or ``I-X``.
    """
    spans: list[Span] = []
    start, kind = None, None
    for i, tag in enumerate(tags):
        if tag == "O":
            prefix, typ = "O", None
        elif isinstance(tag, str) and len(tag) > 2 and tag[:2] in ("B-", "I-"):
            prefix, typ = tag[0], tag[2:]
        else:
            raise ValueError(f"tag {tag!r} at {i} is not O, B-TYPE or I-TYPE")
        if prefix == "I" and kind == typ:
            continue
        if kind is not None:
            spans.append(Span(start, i, kind))
        start, kind = (i, typ) if prefix != "O" else (None, None)
    if kind is not None:
        spans.append(Span(start, len(tags), kind))
    return spans


def tags_from_spans(n: int, spans: Iterable[Span]) -> tuple[str, ...]:
    """IOB2 tags for ``n`` words: ``B-TYPE`` on a span's first word, ``I-TYPE`` on the rest, ``O`` elsewhere."""
    tags = ["O"] * n
    for s in spans:
        tags[s.start] = f"B-{s.type}"
        for i in range(s.start + 1, s.end):
            tags[i] = f"I-{s.type}"
    return tuple(tags)


def _check_sentence(words: Sequence[str], tags: Sequence[str]) -> list[Span]:
    if len(words) != len(tags):
        raise ValueError(f"{len(words)} words but {len(tags)} tags")
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w or len(w.split()) != 1 or w.split()[0] != w:
            raise ValueError(f"word {i} ({w!r}) must be a non-empty string without whitespace")
    return spans_from_tags(tags)


# ---------------------------------------------------------------------------------------------------------------
# Results


_COUNTS = ("entities", "malformed", "hallucinated", "unknown_type", "word_edits", "overlapping")


@dataclass(frozen=True)
class ParseCounts:
    """Parse counts summed over sentences; ``empty`` is the number of empty outputs. JSON-friendly via ``as_dict``.

    Add them with ``+`` (also ``sum(...)``, which starts from 0) or ``ParseCounts.total(items)``.
    """

    sentences: int = 0
    entities: int = 0
    malformed: int = 0
    hallucinated: int = 0
    unknown_type: int = 0
    word_edits: int = 0
    overlapping: int = 0
    empty: int = 0

    def __add__(self, other: ParseCounts | Parsed) -> ParseCounts:
        if isinstance(other, Parsed):
            other = other.counts()
        if not isinstance(other, ParseCounts):
            return NotImplemented
        return ParseCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __radd__(self, other: Any) -> ParseCounts:
        if isinstance(other, int) and other == 0:  # lets sum() start from its default 0
            return self
        return self.__add__(other)

    @classmethod
    def total(cls, items: Iterable[ParseCounts | Parsed]) -> ParseCounts:
        """The sum of ``Parsed`` results and/or ``ParseCounts``."""
        out = cls()
        for item in items:
            out = out + item
        return out

    @property
    def dropped(self) -> int:
        """Entity spans written but not kept (malformed pieces included)."""
        return self.malformed + self.hallucinated + self.unknown_type + self.overlapping

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> ParseCounts:
        """Inverse of ``as_dict``; missing keys are 0, unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ValueError(f"unknown parse count keys: {sorted(extra)}")
        return cls(**{k: int(v) for k, v in data.items()})


@dataclass(frozen=True)
class Parsed:
    """One sentence's parse: IOB2 ``tags`` (always one per word) and what happened to the output's pieces."""

    tags: tuple[str, ...]
    entities: int = 0
    malformed: int = 0
    hallucinated: int = 0
    unknown_type: int = 0
    word_edits: int = 0
    overlapping: int = 0
    empty: bool = False

    def counts(self) -> ParseCounts:
        return ParseCounts(sentences=1, empty=int(self.empty), **{k: getattr(self, k) for k in _COUNTS})


class _Placer:
    """Collects spans for one sentence: refuses unknown types and overlaps, counts everything."""

    def __init__(self, n: int, types: Iterable[str]):
        self.n = n
        self.types = set(types)
        self.used = [False] * n
        self.spans: list[Span] = []
        self.counts = dict.fromkeys(_COUNTS, 0)

    def count(self, what: str, k: int = 1) -> None:
        self.counts[what] += k

    def known(self, typ: str) -> bool:
        if typ in self.types:
            return True
        self.count("unknown_type")
        return False

    def free(self, start: int, end: int) -> bool:
        return not any(self.used[start:end])

    def place(self, start: int, end: int, typ: str) -> bool:
        if not self.free(start, end):
            self.count("overlapping")
            return False
        self.used[start:end] = [True] * (end - start)
        self.spans.append(Span(start, end, typ))
        self.count("entities")
        return True

    def result(self) -> Parsed:
        return Parsed(tags=tags_from_spans(self.n, self.spans), **self.counts)


# ---------------------------------------------------------------------------------------------------------------
# Formats


@dataclass(frozen=True)
class OutputFormat(abc.ABC):
    """What the model is taught to write for a sentence, and how its output is read back into IOB2 tags."""

    name: ClassVar[str]

    @abc.abstractmethod
    def instruction(self, types: Sequence[str]) -> str:
        """One or two sentences telling the model what to write, naming the entity types."""

    @abc.abstractmethod
    def render(self, words: Sequence[str], tags: Sequence[str]) -> str:
        """The training target for a sentence given its IOB2 tags."""

    def parse(self, output: str, words: Sequence[str], types: Iterable[str]) -> Parsed:
        """Model output to one IOB2 tag per word (never raises on bad output; see ``Parsed``). An empty or blank
        answer is every format's "no entities", counted as empty."""
        if not output or not output.strip():
            return Parsed(tags=("O",) * len(words), empty=True)
        return self.read(output, words, types)

    @abc.abstractmethod
    def read(self, output: str, words: Sequence[str], types: Iterable[str]) -> Parsed:
        """A non-blank answer to one IOB2 tag per word (never raises on bad output)."""


FORMATS: dict[str, type[OutputFormat]] = {}


def register_format(cls: type[OutputFormat]) -> type[OutputFormat]:
    """Class decorator adding an ``OutputFormat`` subclass to ``FORMATS`` under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, OutputFormat)):
        raise TypeError(f"{cls!r} is not an OutputFormat subclass")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    if name in FORMATS and FORMATS[name] is not cls:
        raise ValueError(f"output format {name!r} is already registered ({FORMATS[name].__name__})")
    FORMATS[name] = cls
    return cls


def get_format(name: str) -> OutputFormat:
    """An instance of the format registered as ``name``; ``ValueError`` naming the known formats otherwise."""
    try:
        cls = FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown output format {name!r}; known formats: {', '.join(sorted(FORMATS))}") from None
    return cls()


def _type_list(types: Sequence[str]) -> str:
    return ", ".join(types)


# -- inline ------------------------------------------------------------------------------------------------------

_SPECIAL = "\\[]|"


def _escape(word: str) -> str:
    return "".join("\\" + c if c in _SPECIAL else c for c in word)


class _Frame:
    __slots__ = ("start", "text_end", "type_chars", "broken")

    def __init__(self, start: int):
        self.start = start
        self.text_end: int | None = None  # word index where "|" was met; None while reading the span's text
        self.type_chars: list[str] = []
        self.broken = False


def _read_inline(output: str) -> tuple[list[str], list[tuple[int, int, str]], int]:
    """Split inline output into its words (brackets and types removed, escapes undone), the well-formed
    ``[text|TYPE]`` spans over those words, and the number of malformed bracket groups (one per outermost group)."""
    words: list[str] = []
    spans: list[tuple[int, int, str]] = []
    malformed = 0
    stack: list[_Frame] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            words.append("".join(buf))
            buf.clear()

    def pop_broken() -> None:
        nonlocal malformed
        stack.pop()
        if not stack:
            malformed += 1

    i, n = 0, len(output)
    while i < n:
        c = output[i]
        in_type = bool(stack) and stack[-1].text_end is not None
        if c == "\\" and i + 1 < n and output[i + 1] in _SPECIAL:
            (stack[-1].type_chars if in_type else buf).append(output[i + 1])
            i += 2
            continue
        if c == "[":
            flush()
            for frame in stack:  # nested brackets: the whole outermost group is malformed
                frame.broken = True
            stack.append(_Frame(len(words)))
            if len(stack) > 1:
                stack[-1].broken = True
        elif c == "]":
            flush()
            if not stack:
                malformed += 1  # stray "]"
            else:
                frame = stack.pop()
                typ = "".join(frame.type_chars).strip()
                ok = not frame.broken and frame.text_end is not None and typ and frame.text_end > frame.start
                if ok:
                    spans.append((frame.start, frame.text_end, typ))
                elif not stack:
                    malformed += 1  # missing "|TYPE", empty text or type, nested brackets
        elif c == "|" and stack:
            flush()
            if in_type:
                stack[-1].broken = True  # a second "|"
                stack[-1].type_chars.append(c)
            else:
                stack[-1].text_end = len(words)
        elif c.isspace():
            if in_type and not "".join(stack[-1].type_chars).strip():
                pass  # "[text| TYPE]": whitespace before the type is tolerated
            elif in_type:
                j = i
                while j < n and output[j].isspace():
                    j += 1
                if j < n and output[j] == "]":
                    i = j  # "[text|TYPE ]": whitespace before the closing bracket is tolerated
                    continue
                pop_broken()  # the type ran into a word: the group never closed
            else:
                flush()
        elif in_type:
            stack[-1].type_chars.append(c)
        else:
            buf.append(c)
        i += 1
    flush()
    if stack:
        malformed += 1  # unclosed "[" (all still-open frames are one group)
    return words, spans, malformed


@register_format
@dataclass(frozen=True)
class InlineBrackets(OutputFormat):
    """The sentence rewritten with each entity as ``[text|TYPE]``; see the module docstring for escaping."""

    name: ClassVar[str] = "inline"

    def instruction(self, types: Sequence[str]) -> str:
        return (
            "Rewrite the sentence word for word, wrapping each named entity as [entity text|TYPE], "
            f"where TYPE is one of: {_type_list(types)}. "
            "Put a backslash before any \\, [, ] or | that is part of a word."
        )

    def render(self, words: Sequence[str], tags: Sequence[str]) -> str:
        spans = _check_sentence(words, tags)
        for s in spans:
            if not s.type or any(c in _SPECIAL or c.isspace() for c in s.type):
                raise ValueError(f"entity type {s.type!r} cannot be written inline (whitespace or one of {_SPECIAL})")
        out = [_escape(w) for w in words]
        for s in spans:
            out[s.start] = "[" + out[s.start]
            out[s.end - 1] = out[s.end - 1] + "|" + s.type + "]"
        return " ".join(out)

    def read(self, output: str, words: Sequence[str], types: Iterable[str]) -> Parsed:
        placer = _Placer(len(words), types)
        written, spans, malformed = _read_inline(output)
        placer.count("malformed", malformed)
        matcher = difflib.SequenceMatcher(None, list(words), written, autojunk=False)
        to_sentence: list[int | None] = [None] * len(written)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                to_sentence[j1:j2] = range(i1, i2)
            else:
                placer.count("word_edits")
        for start, end, typ in spans:
            if not placer.known(typ):
                continue
            where = to_sentence[start:end]
            if any(k is None for k in where) or where[-1] - where[0] != end - start - 1:
                placer.count("hallucinated")  # some of its words are not the sentence's words there
                continue
            placer.place(where[0], where[-1] + 1, typ)
        return placer.result()


# -- spans -------------------------------------------------------------------------------------------------------


def _occurrences(words: Sequence[str], target: Sequence[str]) -> list[int]:
    k = len(target)
    return [i for i in range(len(words) - k + 1) if list(words[i : i + k]) == list(target)]


@register_format
@dataclass(frozen=True)
class SpanList(OutputFormat):
    """A JSON list of ``{"text", "type"}`` objects (plus ``"occurrence"`` for repeated text), in sentence order."""

    name: ClassVar[str] = "spans"

    def instruction(self, types: Sequence[str]) -> str:
        return (
            'List the named entities of the sentence in order as a JSON list of {"text": ..., "type": ...} objects, '
            f"with type one of: {_type_list(types)}, or [] if there are none. "
            'If an entity\'s text occurs more than once in the sentence, add "occurrence": n (1 for its first '
            "occurrence, 2 for the second, ...)."
        )

    def render(self, words: Sequence[str], tags: Sequence[str]) -> str:
        items = []
        for s in _check_sentence(words, tags):
            item: dict[str, Any] = {"text": " ".join(words[s.start : s.end]), "type": s.type}
            occ = _occurrences(words, words[s.start : s.end])
            if len(occ) > 1:
                item["occurrence"] = occ.index(s.start) + 1
            items.append(item)
        return json.dumps(items, ensure_ascii=False)

    def read(self, output: str, words: Sequence[str], types: Iterable[str]) -> Parsed:
        n = len(words)
        start = len(output) - len(output.lstrip())
        try:
            items, _ = json.JSONDecoder().raw_decode(output, start)  # text after the JSON is ignored
        except (ValueError, RecursionError):
            items = None
        if not isinstance(items, list):  # invalid JSON, or JSON that is not a list
            return Parsed(tags=("O",) * n, malformed=1)
        placer = _Placer(n, types)
        cursor = 0
        for item in items:
            read = self._read_item(item)
            if read is None:
                placer.count("malformed")
                continue
            target, typ, occurrence = read
            if not placer.known(typ):
                continue
            occ = _occurrences(words, target)
            k = len(target)
            if occurrence is not None:
                at = occ[occurrence - 1] if occurrence <= len(occ) else None
            else:
                free = [i for i in occ if placer.free(i, i + k)]
                at = next((i for i in free if i >= cursor), free[0] if free else (occ[0] if occ else None))
            if at is None:
                placer.count("hallucinated")
                continue
            if placer.place(at, at + k, typ):
                cursor = at + k
        return placer.result()

    @staticmethod
    def _read_item(item: Any) -> tuple[list[str], str, int | None] | None:
        """(words of the text, type, occurrence or None), or None when the item is malformed."""
        if not isinstance(item, dict):
            return None
        text, typ, occurrence = item.get("text"), item.get("type"), item.get("occurrence")
        if not isinstance(text, str) or not isinstance(typ, str) or not text.split() or not typ.strip():
            return None
        if occurrence is not None and (type(occurrence) is not int or occurrence < 1):
            return None
        return text.split(), typ.strip(), occurrence
