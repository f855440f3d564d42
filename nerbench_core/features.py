"""Words to model inputs, with labels aligned to the first sub-token of each word.

Each word is tokenized the way it appears inside running text (``"x " + word`` minus the ids of
``"x"``): byte-level BPE (Qwen, Llama 3, SmolLM) then gets its leading-space tokens (``ĠJohn``), WordPiece
and SentencePiece get their usual pieces, and no per-tokenizer switch is needed. Unique words are
tokenized once, in one batch.

A sentence longer than ``max_length`` is split into windows at word boundaries, so every word of every
split is trained on and scored; the number of words that landed past the first window is reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .data import Sentence

IGNORE = -100  # ignored by the cross-entropy loss: special tokens, padding, non-first sub-tokens
_ANCHOR = "x"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE everywhere but the first sub-token of each word of this window
    sentence: int  # index of the sentence in its split: travels with the example, so predictions map back
    word_start: int  # first word of this window within the sentence
    first_tokens: list[int]  # position of each word's first sub-token in input_ids

    def as_features(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "attention_mask": [1] * len(self.input_ids), "labels": self.labels}


@dataclass
class EncodedSplit:
    examples: list[Encoded]
    n_sentences: int
    windowed_words: int  # words outside the first window of a too-long sentence (all still scored)
    truncated_subtokens: int  # sub-tokens dropped from single words longer than a whole window

    @property
    def n_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


class WordEncoder:
    """Tokenizes words in context and knows the tokenizer's special-token frame."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cache: dict[str, list[int]] = {}
        self.anchor = tokenizer(_ANCHOR, add_special_tokens=False)["input_ids"]
        full = tokenizer(_ANCHOR)["input_ids"]
        at = _find(full, self.anchor)
        # the frame the tokenizer puts around text: [CLS] ... [SEP] for BERT, <bos> ... or nothing for decoders
        self.prefix, self.suffix = full[:at], full[at + len(self.anchor):]
        self.budget = max_length - len(self.prefix) - len(self.suffix)
        if self.budget < 1:
            raise ValueError(f"max_length {max_length} leaves no room inside the special tokens")
        self.unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else (self.anchor or [0])[0]

    def learn(self, words: Sequence[str]) -> None:
        new = sorted({w for w in words if w not in self.cache})
        if not new:
            return
        batch = self.tokenizer([f"{_ANCHOR} {w}" for w in new], add_special_tokens=False)["input_ids"]
        n = len(self.anchor)
        for word, ids in zip(new, batch):
            if ids[:n] == self.anchor:
                ids = ids[n:]
            else:  # the anchor merged with the word: fall back to the word alone
                ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            # a word the tokenizer erases (control or zero-width characters) still needs a position to score
            self.cache[word] = ids or [self.unk]

    def encode(self, sentences: Sequence[Sentence], label2id: dict[str, int]) -> EncodedSplit:
        self.learn([w for s in sentences for w in s.words])
        examples: list[Encoded] = []
        windowed = truncated = 0
        for idx, sent in enumerate(sentences):
            start = 0
            while start < len(sent.words):
                ids = list(self.prefix)
                labels = [IGNORE] * len(ids)
                firsts: list[int] = []
                end = start
                while end < len(sent.words):
                    pieces = self.cache[sent.words[end]]
                    used = len(ids) - len(self.prefix)
                    if used + len(pieces) > self.budget:
                        if end > start:
                            break
                        truncated += len(pieces) - self.budget  # one word longer than a window: keep its head
                        pieces = pieces[: self.budget]
                    firsts.append(len(ids))
                    labels += [label2id[sent.tags[end]]] + [IGNORE] * (len(pieces) - 1)
                    ids += pieces
                    end += 1
                ids += self.suffix
                labels += [IGNORE] * len(self.suffix)
                examples.append(Encoded(ids, labels, idx, start, firsts))
                if start > 0:
                    windowed += end - start
                start = end
        return EncodedSplit(examples, len(sentences), windowed, truncated)


def _find(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i: i + len(needle)] == needle:
            return i
    raise ValueError("tokenizer output does not contain the tokens of the text it was given")
