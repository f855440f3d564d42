"""Training batches: how sentences are grouped, padded and counted.

Length-sorted token-budget batches (:class:`TokenBudgetBatches`) hold about the same number of tokens each, with
little padding; where training steps are replayed from CUDA graphs, each batch is padded on to one of a few shapes
(:class:`~nerbench_core.accel.BatchShapes`). Where the plan packs them (accel/packing.py), a batch is one row of its
sentences, no padding between them. The collator counts the real and padded positions it trains on, for the
record's tokens per second and padding share.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from transformers import DataCollatorForTokenClassification

from ..accel import packing
from ..accel.cuda_graphs import BatchShapes
from ..features import EncodedSplit
from ..specs import ModelSpec


class CountingCollator:
    """Pads like DataCollatorForTokenClassification (then on to one of ``shapes``, where training batches are
    replayed from CUDA graphs), or packs the batch into one row (``packed_longest``: the longest a sentence may be,
    where the plan packs; packing.pack), and counts the real and padded positions it trains on."""

    def __init__(self, tokenizer, shapes: BatchShapes | None = None, packed_longest: int | None = None):
        self.pad = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=None, return_tensors="pt")
        self.shapes, self.pad_id, self.packed_longest = shapes, tokenizer.pad_token_id, packed_longest
        self.real_tokens = 0
        self.padded_tokens = 0
        self.counting = True

    def __call__(self, features: list[dict]) -> dict:
        if self.packed_longest:
            batch, real = packing.pack(features, self.pad_id, self.packed_longest, self.shapes)
        else:
            batch = self.pad(features)
            real = int(batch["attention_mask"].sum())
            if self.shapes is not None:
                batch = self.shapes.pad(batch, self.pad_id)
        if self.counting:
            self.real_tokens += real
            self.padded_tokens += batch["input_ids"].numel() - real
        return batch

    @property
    def padding_fraction(self) -> float:
        total = self.real_tokens + self.padded_tokens
        return self.padded_tokens / total if total else 0.0


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, split: EncodedSplit):
        self.rows = [e.as_features() for e in split.examples]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    @property
    def lengths(self) -> list[int]:
        return [len(r["input_ids"]) for r in self.rows]


class TokenBudgetBatches(torch.utils.data.Sampler):
    """Batches of similar length holding at most ``max_tokens`` positions (padding included) each.

    Sentences are shuffled, taken in pools of ``pool`` batches' worth, sorted by length inside a pool and cut
    greedily under the budget; the batch order is shuffled again. Short sentences thus travel in large
    batches and long ones in small, so every step does about the same work with little padding.
    """

    def __init__(self, lengths: list[int], max_tokens: int, max_sentences: int, seed: int, pool: int = 64,
                 padded_length: Callable[[int], int] | None = None):
        self.lengths, self.max_tokens, self.max_sentences = lengths, max_tokens, max_sentences
        self.padded_length = padded_length or (lambda n: n)  # what a batch's longest row will be padded to
        self.seed, self.pool, self.epoch = seed, pool, 0
        self._batches = self._make(0)

    def _make(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.pool * self.max_sentences
        batches: list[list[int]] = []
        for start in range(0, len(order), size):
            batch: list[int] = []
            longest = 0
            for i in sorted(order[start: start + size], key=self.lengths.__getitem__):
                longest_if = max(longest, self.padded_length(self.lengths[i]))
                if batch and (longest_if * (len(batch) + 1) > self.max_tokens or len(batch) >= self.max_sentences):
                    batches.append(batch)
                    batch, longest_if = [], self.padded_length(self.lengths[i])
                batch.append(i)
                longest = longest_if
            if batch:
                batches.append(batch)
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def __len__(self) -> int:
        return len(self._batches)

    def set_epoch(self, epoch: int) -> None:
        """The Trainer names each epoch before it starts: a run resumed at epoch k gets epoch k's batches, as an
        uninterrupted run would."""
        if epoch != self.epoch:
            self.epoch, self._batches = epoch, self._make(epoch)

    def __iter__(self):
        batches, self.epoch = self._batches, self.epoch + 1
        self._batches = self._make(self.epoch)  # the next epoch's (same count within a batch or two)
        return iter(batches)


def token_budget_batches(spec: ModelSpec, lengths: list[int],
                         shapes: BatchShapes | None = None) -> TokenBudgetBatches | None:
    """The spec's token-budget batches over training sentences of these lengths (sub-tokens), cut by the lengths
    they will be padded to (``shapes``, for padded batches under CUDA graphs; packed batches are cut by their real
    lengths); None without a budget."""
    t = spec.train
    if not t.max_tokens_per_batch:
        return None
    return TokenBudgetBatches(lengths, t.max_tokens_per_batch, t.batch_size, t.seed,
                              padded_length=shapes.length if shapes else None)


def steps_per_epoch(spec: ModelSpec, lengths: list[int], batches: TokenBudgetBatches | None = None) -> int:
    """Optimizer steps in an epoch of training sentences of these lengths, as the batches will be cut (``batches``:
    token_budget_batches' answer, when already made)."""
    batches = batches or token_budget_batches(spec, lengths)
    return len(batches) if batches is not None else max(1, math.ceil(len(lengths) / spec.train.batch_size))
