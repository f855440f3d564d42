"""Padding and batch shapes of the CUDA-graph length ladder, simulated on a training split (CPU, no model).

    NERBENCH_DATA_DIR=../shared/data/conll2003 python docs/ladder_padding.py TOKENIZER_FOLDER_OR_HUB_ID

For the current ladder and two finer ones: the batches of one epoch as training cuts them (1,024-token budget),
the padding fraction of their positions, and the number of distinct (rows, length) shapes, i.e. of graph captures.
"""
import os
import sys
from pathlib import Path

from nerbench_core.accel import cuda_graphs
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


if __name__ == "__main__":
    main()
