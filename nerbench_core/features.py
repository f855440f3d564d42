"""Words to model inputs, with labels aligned to the first sub-token of each word.

Each word is tokenized the way it appears inside running text (``"x " + word`` minus the ids of
``"x"``): byte-level BPE (Qwen, Llama 3, SmolLM) then gets its leading-space tokens (``ĠJohn``), WordPiece
and SentencePiece get their usual pieces, and no per-tokenizer switch is needed. Unique words are
tokenized once, in one batch.

A sentence longer than ``max_length`` is split into windows at word boundaries, so every word of every
split is trained on and scored; the number of words that landed past the first window is reported.

Document context (``context_sentences = N``): up to N sentences of the same document on each side of the target
(CoNLL's ``-DOCSTART-`` boundaries) fill the room ``max_length`` leaves, the nearest tokens first, half on each side
(a side that needs less gives the rest to the other). Context tokens carry no label: loss, prediction and scoring
are the target sentence's alone.
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

    def __init__(self, tokenizer, max_length: int, context: int = 0):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.context = context
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
                ids: list[int] = []
                labels: list[int] = []
                firsts: list[int] = []
                end = start
                while end < len(sent.words):
                    pieces = self.cache[sent.words[end]]
                    if len(ids) + len(pieces) > self.budget:
                        if end > start:
                            break
                        truncated += len(pieces) - self.budget  # one word longer than a window: keep its head
                        pieces = pieces[: self.budget]
                    firsts.append(len(ids))
                    labels += [label2id[sent.tags[end]]] + [IGNORE] * (len(pieces) - 1)
                    ids += pieces
                    end += 1
                left, right = self.context_around(sentences, idx, self.budget - len(ids))
                at = len(self.prefix) + len(left)
                ids = list(self.prefix) + left + ids + right + list(self.suffix)
                labels = [IGNORE] * at + labels + [IGNORE] * (len(right) + len(self.suffix))
                examples.append(Encoded(ids, labels, idx, start, [at + f for f in firsts]))
                if start > 0:
                    windowed += end - start
                start = end
        return EncodedSplit(examples, len(sentences), windowed, truncated)

    def context_around(self, sentences: Sequence[Sentence], idx: int, room: int) -> tuple[list[int], list[int]]:
        """Token ids of up to ``self.context`` sentences of the same document before and after sentence ``idx``,
        at most ``room`` of them together, nearest first."""
        if not self.context or room <= 0:
            return [], []
        doc = sentences[idx].doc

        def tokens(neighbours) -> list[int]:
            return [t for s in neighbours if s.doc == doc for w in s.words for t in self.cache[w]]

        # the same document only: stop at the first sentence of another one
        before = [s for s in sentences[max(0, idx - self.context): idx]]
        while before and before[0].doc != doc:
            before.pop(0)
        after = []
        for s in sentences[idx + 1: idx + 1 + self.context]:
            if s.doc != doc:
                break
            after.append(s)
        left, right = tokens(before), tokens(after)
        half = room // 2
        n_left = min(len(left), max(half, room - len(right)))
        n_right = min(len(right), room - n_left)
        return (left[len(left) - n_left:] if n_left else []), right[:n_right]


def _find(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i: i + len(needle)] == needle:
            return i
    raise ValueError("tokenizer output does not contain the tokens of the text it was given")


def left_padded(prompts: Sequence[list[int]], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Prompts as one batch padded on the left, and its attention mask."""
    import torch  # here alone: the rest of this module is plain Python

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids, mask
