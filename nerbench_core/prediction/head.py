"""Predictions for a split, mapped back to word-level tags through the indices each example carries.

Batches are sorted by length (little padding) but every example keeps its sentence index and word
offset, so no sampler can misalign predictions and rows (the Trainer's length-grouped sampler also
reorders its own predict() batches, which is why prediction does not go through it).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from ..features import EncodedSplit


@dataclass
class Predictions:
    tags: list[list[str]]  # one tag per word, per sentence, in the split's order
    seconds: float
    sentences_per_second: float
    parse: dict | None = None  # generative: what the parser dropped (prediction.formats.ParseCounts)
    generated_tokens_per_second: float | None = None  # generative


@torch.no_grad()
def predict_tags(model, split: EncodedSplit, id2label: dict[int, str], collate, batch_size: int,
                 autocast_dtype: torch.dtype | None = None, max_tokens: int | None = None) -> Predictions:
    """Tags for every word of ``split``: batches of up to ``batch_size`` examples in length order, and of at most
    ``max_tokens`` tokens with their padding (what the memory holds: :func:`accel.memory.prediction_tokens`); a batch
    that still runs out of memory is tried again with half its rows, and the batches after it hold at most half its
    tokens."""
    was_training = model.training
    model.eval()
    device = next(p.device for p in model.parameters())
    order = sorted(range(len(split.examples)), key=lambda i: len(split.examples[i].input_ids))
    n_words: dict[int, int] = {}
    for e in split.examples:
        n_words[e.sentence] = max(n_words.get(e.sentence, 0), e.word_start + len(e.first_tokens))
    tags: list[list[str | None]] = [[None] * n_words.get(i, 0) for i in range(split.n_sentences)]
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    start = time.perf_counter()
    queued = []  # (examples, their best label ids on the device)
    rows_cap, b = batch_size, 0
    while b < len(order):
        chunk = _next_batch(split, order, b, rows_cap, max_tokens)
        batch = collate([{k: v for k, v in e.as_features().items() if k != "labels"} for e in chunk])
        try:
            with autocast:
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            logits = None  # handled below, outside the handler, whose traceback holds the failed pass's tensors
        if logits is None:  # the memory estimate was short: half the rows and tokens, again
            rows_cap, max_tokens = len(chunk) // 2, batch["input_ids"].numel() // 2
            torch.cuda.empty_cache()
            continue
        # left on the device: copying them back now would make the host wait for this batch before it can prepare
        # and queue the next one
        queued.append((chunk, logits.argmax(-1)))
        b += len(chunk)
    for chunk, best in queued:
        for e, row in zip(chunk, best.tolist()):
            for j, pos in enumerate(e.first_tokens):
                tags[e.sentence][e.word_start + j] = id2label[row[pos]]
    seconds = time.perf_counter() - start
    model.train(was_training)
    assert all(t is not None for sent in tags for t in sent), "a word received no prediction"
    return Predictions(tags, seconds, split.n_sentences / seconds if seconds > 0 else 0.0)  # type: ignore[arg-type]


def _next_batch(split: EncodedSplit, order: list[int], start: int, rows: int, max_tokens: int | None) -> list:
    """The examples from ``start`` in ``order`` (ascending length): up to ``rows`` of them, fewer where the batch
    padded to its longest would exceed ``max_tokens`` (at least one)."""
    end = min(len(order), start + rows)
    if max_tokens is not None:
        # the batch's longest is its last: the most rows n with n * length(start + n - 1) <= max_tokens
        n = 1
        while start + n < end and (n + 1) * len(split.examples[order[start + n]].input_ids) <= max_tokens:
            n += 1
        end = start + n
    return [split.examples[i] for i in order[start:end]]
