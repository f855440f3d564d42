"""Padding and batch shapes of the CUDA-graph length ladder, simulated on a training split (CPU, no model).

    NERBENCH_DATA_DIR=../shared/data/conll2003 python docs/ladder_padding.py TOKENIZER_FOLDER_OR_HUB_ID

For the current ladder and two finer ones: the batches of one epoch as training cuts them (1,024-token budget),
the padding fraction of their positions, and the number of distinct (rows, length) shapes, i.e. of graph captures.
Then packed rows (accel/packing.py) over the seed suite's 3 epochs (seed 42), laid out by packing.pack: padded to
the token budget (now) and up the ladder (before), with their (positions, segments) shapes and how many steps each.
"""
import os
import sys
from collections import Counter
from pathlib import Path

from nerbench_core.accel import cuda_graphs, packing
from nerbench_core.backends.hf import tokenizer_for
from nerbench_core.data import load_conll_dir
from nerbench_core.features import WordEncoder
from nerbench_core.training.batching import TokenBudgetBatches

LADDERS = {"current": cuda_graphs.LADDER, "2/4/8": ((2, 32), (4, 64), (8, 128)), "1/2/4": ((1, 40), (2, 64), (4, 128))}


def simulate(lengths: list[int], budget: int = 1024, rows: int = 4096) -> tuple[int, float, int]:
    shapes = cuda_graphs.BatchShapes(rows, budget)
    sampler = TokenBudgetBatches(lengths, budget, rows, seed=0, padded_length=shapes.length)
    real = positions = 0
    seen = set()
    for batch in sampler:
        length = shapes.length(max(lengths[i] for i in batch))
        shape = (max(len(batch), shapes.rows(length)), length)
        real += sum(lengths[i] for i in batch)
        positions += shape[0] * shape[1]
        seen.add(shape)
    return len(sampler), 1 - real / positions, len(seen)


class LadderRows(cuda_graphs.BatchShapes):
    """Packed rows as first built: up the length ladder instead of to the token budget."""

    def packed_length(self, n: int, longest: int) -> int:
        return self.length(n)


def simulate_packed(lengths: list[int], shapes: cuda_graphs.BatchShapes, longest: int = 128, epochs: int = 3,
                    seed: int = 42) -> tuple[float, Counter]:
    """Padding and shapes of the packed rows the sampler's batches make (cut by real tokens, as training cuts them)."""
    sampler = TokenBudgetBatches(lengths, shapes.max_tokens, shapes.max_rows, seed=seed)
    real = positions = 0
    seen: Counter = Counter()
    for _ in range(epochs):  # each pass over the sampler is the next epoch's batches
        for batch in sampler:
            rows = [{"input_ids": [0] * lengths[i], "labels": [0] * lengths[i]} for i in batch]
            packed, n = packing.pack(rows, 0, longest, shapes)
            seen[(packed["input_ids"].shape[1], packed[packing.SEGMENTS].shape[0] - 1)] += 1
            real, positions = real + n, positions + packed["input_ids"].shape[1]
    return 1 - real / positions, seen


def main() -> None:
    dataset = load_conll_dir(Path(os.environ["NERBENCH_DATA_DIR"]))
    encoder = WordEncoder(tokenizer_for(sys.argv[1]), 128)
    split = encoder.encode(dataset["train"], {label: i for i, label in enumerate(dataset.labels)})
    lengths = [len(e.input_ids) for e in split.examples]
    print(f"{len(lengths)} sentences, {sum(lengths) / len(lengths):.1f} sub-tokens on average")
    for name, ladder in LADDERS.items():
        cuda_graphs.LADDER = ladder  # bucket_length reads it
        batches, padding, shapes = simulate(lengths)
        print(f"ladder {name} {ladder}: {batches} batches, padding {padding:.1%}, {shapes} shapes")
    cuda_graphs.LADDER = LADDERS["current"]
    for name, kind in (("to the token budget", cuda_graphs.BatchShapes), ("up the ladder", LadderRows)):
        padding, seen = simulate_packed(lengths, kind(4096, 1024))
        print(f"packed rows {name}: padding {padding:.2%}, {len(seen)} shapes (positions, segments): steps "
              + ", ".join(f"{shape}: {count}" for shape, count in sorted(seen.items())))


if __name__ == "__main__":
    main()
