"""The generative paradigm: a decoder is fine-tuned to write a sentence's entities, and what it writes is parsed back
into one tag per word, scored like the head paradigm's.

Prompt -> target -> generation -> parse -> tags, top to bottom:

* Prompt (:class:`Prompts`): the output format's instruction naming the data set's entity types; with
  ``context_sentences = N``, up to N sentences of the same document before and after the sentence, each side on a
  line of its own marked as context that is not to be tagged; then ``Sentence:`` and the sentence's words joined by
  spaces. Where the tokenizer has a chat template, this is the user's message and the assistant's turn is opened
  after it; else the tokenizer's BOS (if any), the text, and ``"\\nOutput:"``.
* Target: ``OutputFormat.render`` of the words and their gold tags, then the tokenizer's EOS. A training example is
  prompt + target with loss on the target alone (labels -100 on every prompt token).
* Room: every example fits ``train.max_length``. A sentence whose prompt and answer do not fit even without context
  is split into windows of words that do, each its own prompt and target (counted in ``windowed_words``); context
  then fills the room left, the words nearest the sentence first, half the room on each side. The answer's room is
  the gold target in training; in dev and test, whose gold is not looked at, it is the words' own tokens (an answer
  without entities in the inline format), so windows there are cut from the words alone.
* Generation: greedy with the KV cache, over prompts sorted by length, in batches of ``eval_batch_size`` padded on
  the LEFT, so that every prompt ends where generation starts (the training tokenizer pads on the right, so the
  padding is done here). ``max_new_tokens`` is the longest answer the format can write for the batch's words (each
  word an entity of the longest type name, rendered and tokenized) plus a margin: a model that never writes EOS
  (random weights) stops there. On a GPU the speed plan's decoder does the same with its steps replayed from CUDA
  graphs (accel.graphed_generation: the same tokens).
* Parse: the tokens up to the first EOS, decoded without special tokens, read by the format into one tag per word of
  the window. What it cannot use is counted (``ParseCounts``, whose ``sentences`` counts windows), never raised.
* Tags: each sentence's windows' tags, joined; every word gets one.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from ..data import SPLITS, NerDataset, Sentence
from ..features import IGNORE, Encoded, EncodedSplit, WordEncoder, left_padded
from ..precision import autocast_dtype
from ..specs import ModelSpec
from .formats import OutputFormat, ParseCounts, get_format
from .head import Predictions
from .tasks import Task

ANSWER_MARGIN = 8  # tokens beyond the rendered longest answer: a generated answer may tokenize a little differently
PLAIN_CUE = "\nOutput:"  # ends the prompt of a tokenizer without a chat template
CONTEXT_BEFORE = "Context before the sentence (do not tag): "
CONTEXT_AFTER = "Context after the sentence (do not tag): "
SENTENCE = "Sentence: "
_SLOT = "\x00nerbench prompt\x00"  # stands for the prompt while the chat template is rendered once


@dataclass
class Window:
    """Words ``start:end`` of sentence ``sentence`` of a split, as the model is asked about them."""

    sentence: int
    start: int
    end: int
    prompt: list[int]
    target: list[int]  # the gold answer then EOS (training); [] in dev and test
    max_new_tokens: int


class Prompts:
    """Prompt and target token ids, and the windows of a split that fit ``max_length``."""

    def __init__(self, tokenizer, fmt: OutputFormat, types: Sequence[str], max_length: int, context: int = 0,
                 eos: int | None = None):
        """``eos``: the token that ends an answer (default: the tokenizer's EOS)."""
        eos = tokenizer.eos_token_id if eos is None else eos
        if eos is None:
            raise ValueError("the generative paradigm needs a tokenizer with an EOS token (it ends every answer)")
        self.tokenizer, self.format, self.types = tokenizer, fmt, list(types)
        self.max_length, self.context = max_length, context
        self.eos = eos
        self.instruction = fmt.instruction(self.types)
        self.words = WordEncoder(tokenizer, max_length)  # each word's sub-tokens in running text; the BOS frame
        self.head, self.tail, self.bos = self.frame()
        # a window's prompt and target are asked for more than once while it is fitted, and tokenizing is most of
        # the time a split's prompts take
        self._cached_tokens = functools.lru_cache(maxsize=256)(self._tokenize)
        smallest = len(self.prompt(["x"])) + len(self.target(["x"], ["O"]))
        if smallest > max_length:
            raise ValueError(f"max_length {max_length} leaves no room for a sentence: the prompt and answer of a "
                             f"one-word sentence take {smallest} tokens")

    def frame(self) -> tuple[str, str, list[int]]:
        """Text before and after the prompt, and the token ids put before it all.

        The chat template is rendered once around a placeholder (its BOS, system turn and opened assistant turn are
        in its text); a tokenizer without one gets its own leading special tokens (BOS) and the plain cue."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": _SLOT}],
                                                      add_generation_prompt=True, tokenize=False)
            head, found, tail = text.partition(_SLOT)
            if not found:
                raise ValueError("the tokenizer's chat template does not keep the user's message as given")
            return head, tail, []
        return "", PLAIN_CUE, list(self.words.prefix)

    # -- prompt and target ------------------------------------------------------------------------------------

    def text(self, words: Sequence[str], before: Sequence[str] = (), after: Sequence[str] = ()) -> str:
        lines = [self.instruction]
        if before:
            lines.append(CONTEXT_BEFORE + " ".join(before))
        if after:
            lines.append(CONTEXT_AFTER + " ".join(after))
        lines.append(SENTENCE + " ".join(words))
        return self.head + "\n".join(lines) + self.tail

    def prompt(self, words: Sequence[str], before: Sequence[str] = (), after: Sequence[str] = ()) -> list[int]:
        return self.bos + self.tokens(self.text(words, before, after))

    def target(self, words: Sequence[str], tags: Sequence[str]) -> list[int]:
        return self.tokens(self.format.render(words, tags)) + [self.eos]

    def tokens(self, text: str) -> list[int]:
        return list(self._cached_tokens(text))

    def _tokenize(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def max_new_tokens(self, words: Sequence[str]) -> int:
        """The longest answer the format can write for these words, from the words alone: each word an entity of the
        longest type name (the most markup there can be), rendered and tokenized, EOS and a margin included."""
        longest = max(self.types, key=len, default=None)
        tags = [f"B-{longest}" if longest else "O"] * len(words)
        return len(self.target(words, tags)) + ANSWER_MARGIN

    # -- windows and context ----------------------------------------------------------------------------------

    def windows(self, sentences: Sequence[Sentence], gold: bool) -> list[Window]:
        """Every sentence in windows that fit; ``gold``: with their targets, and room for them (training)."""
        self.words.learn([w for s in sentences for w in s.words])
        out = []
        for i, sent in enumerate(sentences):
            start = 0
            while start < len(sent.words):
                end = self.window_end(sent, start, gold)
                out.append(self.window(sentences, i, start, end, gold))
                start = end
        return out

    def window(self, sentences: Sequence[Sentence], i: int, start: int, end: int, gold: bool) -> Window:
        sent = sentences[i]
        words = sent.words[start:end]
        target = self.target(words, sent.tags[start:end]) if gold else []
        before, after = self.neighbours(sentences, i)
        prompt = self.with_context(words, before, after, self.answer_room(sent, start, end, gold))
        # training windows are never generated from: their bound is not worked out (it tokenizes a long answer)
        return Window(i, start, end, prompt, target, 0 if gold else self.max_new_tokens(words))

    def answer_room(self, sent: Sentence, start: int, end: int, gold: bool) -> int:
        """What a window's prompt leaves room for: its gold target in training, else the words' own tokens and EOS
        (the gold of dev and test is never looked at)."""
        if gold:
            return len(self.target(sent.words[start:end], sent.tags[start:end]))
        return sum(len(self.words.cache[w]) for w in sent.words[start:end]) + 1

    def fits(self, sent: Sentence, start: int, end: int, gold: bool) -> bool:
        return len(self.prompt(sent.words[start:end])) + self.answer_room(sent, start, end, gold) <= self.max_length

    def window_end(self, sent: Sentence, start: int, gold: bool) -> int:
        """The end of the longest window from ``start`` that fits without context (one word at least: a word too
        long for any window is cut in training, :func:`encoded`)."""
        end = len(sent.words)
        if self.fits(sent, start, end, gold):
            return end
        lo, hi = start + 1, end - 1  # binary search: the longer the window, the longer its prompt and answer
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits(sent, start, mid, gold):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def neighbours(self, sentences: Sequence[Sentence], i: int) -> tuple[list[str], list[str]]:
        """Words of up to ``context`` sentences before and after sentence ``i``, of its document only (a document's
        sentences are contiguous in a split)."""
        if not self.context:
            return [], []
        doc = sentences[i].doc

        def words(neighbours: Sequence[Sentence]) -> list[str]:
            return [w for s in neighbours if s.doc == doc for w in s.words]

        return words(sentences[max(0, i - self.context): i]), words(sentences[i + 1: i + 1 + self.context])

    def with_context(self, words: Sequence[str], before: list[str], after: list[str], answer: int) -> list[int]:
        """The prompt with as much context as fits beside an answer of ``answer`` tokens: the nearest words first,
        half the room on each side (a side that needs less leaves the rest to the other); the farthest words are
        dropped until the prompt, tokenized as a whole, fits."""
        bare = self.prompt(words)
        room = self.max_length - answer - len(bare)
        if room <= 0 or not (before or after):
            return bare
        before, after = self.nearest(before, after, room)
        while before or after:
            prompt = self.prompt(words, before, after)
            excess = len(prompt) + answer - self.max_length  # the context lines' labels, merges across words
            if excess <= 0:
                return prompt
            before, after = self.drop_farthest(before, after, excess)
        return bare

    def cost(self, words: Sequence[str]) -> int:
        return sum(len(self.words.cache[w]) for w in words)

    def nearest(self, before: list[str], after: list[str], room: int) -> tuple[list[str], list[str]]:
        left_room = min(self.cost(before), max(room // 2, room - self.cost(after)))
        n_left = _within([len(self.words.cache[w]) for w in reversed(before)], left_room)
        kept_before = before[len(before) - n_left:]
        n_right = _within([len(self.words.cache[w]) for w in after], room - self.cost(kept_before))
        return kept_before, after[:n_right]

    def drop_farthest(self, before: list[str], after: list[str], excess: int) -> tuple[list[str], list[str]]:
        """Drop the farthest words of the longer side until ``excess`` tokens are gone (or no context is left)."""
        before, after = list(before), list(after)
        while excess > 0 and (before or after):
            if before and self.cost(before) >= self.cost(after):
                excess -= self.cost([before.pop(0)])
            else:
                excess -= self.cost([after.pop()])
        return before, after


def _within(costs: Sequence[int], room: int) -> int:
    """How many of ``costs``, from the first, fit together in ``room``."""
    n = total = 0
    for c in costs:
        total += c
        if total > room:
            break
        n += 1
    return n


def encoded(windows: Sequence[Window], n_sentences: int, max_length: int) -> EncodedSplit:
    """The windows as examples: prompt then target, labels on the target alone. A training window of one word too
    long for ``max_length`` is cut there (the cut tokens counted as truncated; left out where not one target token
    would remain). Dev and test examples are the prompts alone."""
    examples, truncated = [], 0
    for w in windows:
        ids, labels = w.prompt + w.target, [IGNORE] * len(w.prompt) + w.target
        if w.target and len(ids) > max_length:
            truncated += len(ids) - max_length
            if len(w.prompt) >= max_length:
                continue
            ids, labels = ids[:max_length], labels[:max_length]
        examples.append(Encoded(input_ids=ids, labels=labels, sentence=w.sentence, word_start=w.start, first_tokens=[]))
    windowed = sum(w.end - w.start for w in windows if w.start > 0)
    return EncodedSplit(examples, n_sentences, windowed, truncated)


class GenerativeTask(Task):
    """Prompts and targets for the one training path; tags from greedy generation, parsed by the output format."""

    def __init__(self, spec: ModelSpec, built, dataset: NerDataset, decoder=None):
        """``decoder``: greedy decoding of a whole split, ``decoder(model, prompts, bounds, eos, pad)`` -> each
        prompt's new tokens, where the speed plan gives one (accel.graphed_generation); else transformers'
        ``generate``, batch by batch."""
        super().__init__(spec, built, dataset)
        self.decoder = decoder
        self.format = get_format(spec.output_format)
        self.types = list(dataset.entity_types)
        self.tokenizer = built.tokenizer
        self.prompts = Prompts(built.tokenizer, self.format, self.types, spec.train.max_length,
                               spec.context_sentences, end_of_answer(built))
        self.windows = {name: self.prompts.windows(dataset[name], gold=name == "train") for name in SPLITS}
        self.splits = {name: encoded(self.windows[name], len(dataset[name]), spec.train.max_length)
                       for name in SPLITS}

    @torch.no_grad()
    def predict(self, model, name: str) -> Predictions:
        windows = self.windows[name]
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        try:
            answers, generated = self.generate(model, windows)
        finally:
            model.train(was_training)
        tags, counts = self.read(name, windows, answers)
        seconds = time.perf_counter() - start
        return Predictions(tags, seconds, per_second(len(self.dataset[name]), seconds), parse=counts.as_dict(),
                           generated_tokens_per_second=per_second(generated, seconds))

    # -- generation -------------------------------------------------------------------------------------------

    def generate(self, model, windows: Sequence[Window]) -> tuple[list[str], int]:
        """Each window's answer text (up to its first EOS), and the number of tokens generated in all."""
        device = next(p.device for p in model.parameters())
        dtype = autocast_dtype(self.spec)
        # no cast cache: a recorded decoding step must cast the weights it reads itself (accel.graphed_generation)
        autocast = (torch.autocast(device.type, dtype=dtype, cache_enabled=False) if dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            if self.decoder is not None:
                rows = self.decoder(model, [w.prompt for w in windows], [w.max_new_tokens for w in windows],
                                    self.prompts.eos, self.tokenizer.pad_token_id)
            else:
                rows = self.generate_in_batches(model, windows, device)
        answers, generated = [], 0
        for w, row in zip(windows, rows):
            # a row's own bound: its answer does not depend on which windows shared its batch
            answer, n = until_eos(row[:w.max_new_tokens], self.prompts.eos)
            answers.append(self.tokenizer.decode(answer, skip_special_tokens=True))
            generated += n
        return answers, generated

    def generate_in_batches(self, model, windows: Sequence[Window], device: torch.device) -> list[list[int]]:
        """transformers' ``generate`` over batches of prompts sorted by length (little padding a batch)."""
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].prompt))
        size = self.spec.train.eval_batch_size
        rows: list[list[int]] = [[] for _ in windows]
        for b in range(0, len(order), size):
            batch = order[b: b + size]
            for i, row in zip(batch, self.generate_batch(model, [windows[i] for i in batch], device)):
                rows[i] = row
        return rows

    def generate_batch(self, model, windows: Sequence[Window], device: torch.device) -> list[list[int]]:
        """The new tokens of each window's prompt, greedily; rows that ended early are padded after their EOS."""
        ids, mask = left_padded([w.prompt for w in windows], self.tokenizer.pad_token_id)
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device),
            do_sample=False, num_beams=1, use_cache=True,
            # greedy means the plain argmax: a model's shipped generation_config may carry a repetition penalty
            repetition_penalty=1.0,
            max_new_tokens=max(w.max_new_tokens for w in windows),
            eos_token_id=self.prompts.eos, pad_token_id=self.tokenizer.pad_token_id,
        )
        return out[:, ids.shape[1]:].tolist()

    # -- parse and tags ---------------------------------------------------------------------------------------

    def read(self, name: str, windows: Sequence[Window], answers: Sequence[str]) -> tuple[list[list[str]], ParseCounts]:
        """Each window's answer parsed into tags of its words, joined into sentences; the parse counts summed."""
        sentences = self.dataset[name]
        tags: list[list[str | None]] = [[None] * len(s.words) for s in sentences]
        counts = ParseCounts()
        for w, answer in zip(windows, answers):
            parsed = self.format.parse(answer, sentences[w.sentence].words[w.start:w.end], self.types)
            tags[w.sentence][w.start:w.end] = parsed.tags
            counts += parsed
        assert all(t is not None for sent in tags for t in sent), "a word received no prediction"
        return tags, counts  # type: ignore[return-value]


def end_of_answer(built) -> int | None:
    """The token an answer ends with: the model's own end of generation (its generation config: the end of an
    assistant turn for chat models, e.g. SmolLM2's <|im_end|>, whose tokenizer converted from GGUF names another
    token as EOS), else the tokenizer's EOS."""
    config = getattr(getattr(built, "model", None), "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    return eos[0] if isinstance(eos, (list, tuple)) and eos else eos


def until_eos(tokens: list[int], eos: int) -> tuple[list[int], int]:
    """The tokens before the first EOS, and how many were generated (the EOS included; padding after it not)."""
    if eos in tokens:
        at = tokens.index(eos)
        return tokens[:at], at + 1
    return tokens, len(tokens)


def per_second(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0
