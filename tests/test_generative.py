"""The generative paradigm on CPU: prompts, targets and windows; a tiny causal Qwen2 trained through the one recipe,
generating, parsed back into tags; saved and reloaded; run as a whole case; random weights writing nonsense."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nerbench_core.backends.base import build as build_case
from nerbench_core.backends.base import load_case, save_case
from nerbench_core.backends.hf import tokenizer_for
from nerbench_core.backends.synthetic import synthetic_spec
from nerbench_core.data import NerDataset, Sentence, load_conll_dir
from nerbench_core.features import IGNORE, left_padded
from nerbench_core.options import RunOptions
from nerbench_core.prediction.formats import FORMATS, get_format
from nerbench_core.prediction.generative import (CONTEXT_AFTER, CONTEXT_BEFORE, PLAIN_CUE, SENTENCE, GenerativeTask,
                                                 until_eos)
from nerbench_core.scoring import score
from nerbench_core.specs import ModelSpec, TrainConfig

from .helpers import bpe_tokenizer, build, make_conll_dir, sentence, train

TYPES = ["LOC", "ORG", "PER"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_causal_lm(folder: Path, chat: bool) -> Path:
    """A 2-layer Qwen2ForCausalLM (its lm_head saved, so a reloaded case has the same one) with a byte-level BPE
    trained on the test sentences, their rendered targets and the instructions: prompts of about a hundred tokens.
    ``chat``: a ChatML template, with the end of turn as EOS (as Qwen's instruct tokenizers have it)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    rng = random.Random(1)
    texts = [get_format(f).instruction(TYPES) for f in FORMATS] * 20
    for _ in range(300):
        words, tags = zip(*sentence(rng))
        texts += [" ".join(words)] + [get_format(f).render(words, tags) for f in FORMATS]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=1000, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>" if chat else "<|endoftext|>",
                                  unk_token="<|endoftext|>", pad_token="<|pad|>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=1024)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Generation runs hundreds of tiny forward passes: on a CPU shared with other jobs, every OpenMP barrier of a
    multi-threaded matmul waits for a descheduled thread (measured here: 70 s against 0.4 s for the same dev split).
    Threads gain nothing at this size; the previous setting is put back after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def plain_lm(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("plain_lm"), chat=False)


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("chat_lm"), chat=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Documents of five sentences (helpers.write_conll), small dev and test: generation on CPU is slow."""
    return load_conll_dir(make_conll_dir(tmp_path_factory.mktemp("data"), sizes=(24, 6, 6)))


def spec_for(model_dir, **kw) -> ModelSpec:
    # float32 on CPU: bf16 autocast there is slow, and exact numbers let batched and single generation be compared
    train_config = TrainConfig(learning_rate=5e-3, epochs=1, batch_size=8, eval_batch_size=8, max_length=256,
                               warmup_ratio=0.0, bf16=False)
    base = ModelSpec(name="gen", model=str(model_dir), family="decoder", method="lora", backend="hf",
                     paradigm="generative", train=train_config)
    return dataclasses.replace(base, **kw)


def with_train(spec: ModelSpec, **kw) -> ModelSpec:
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **kw))


def task_without_model(model_dir, dataset, **kw) -> GenerativeTask:
    """Prompts and targets need the tokenizer alone (as the backend sets it up)."""
    built = SimpleNamespace(tokenizer=tokenizer_for(str(model_dir)))
    return GenerativeTask(spec_for(model_dir, **kw), built, dataset)


def documents(*docs: list[str]) -> NerDataset:
    """A data set from documents of sentences written as "word/TAG word ..." (tag O where none is given)."""
    sentences = []
    for d, doc in enumerate(docs):
        for text in doc:
            pairs = [w.split("/") if "/" in w else (w, "O") for w in text.split()]
            words, tags = zip(*pairs)
            sentences.append(Sentence(tuple(words), tuple(tags), doc=d))
    return NerDataset({"train": sentences, "dev": sentences, "test": sentences}, source="test")


def prompt_lines(task: GenerativeTask, window) -> list[str]:
    text = task.tokenizer.decode(window.prompt)
    return text.removesuffix(PLAIN_CUE).splitlines()


# ---------------------------------------------------------------- prompts, targets, windows (no model)


@pytest.mark.parametrize("output_format", sorted(FORMATS))
@pytest.mark.parametrize("lm", ["plain_lm", "chat_lm"])
def test_the_loss_falls_on_the_target_alone(request, lm, output_format, dataset):
    task = task_without_model(request.getfixturevalue(lm), dataset, output_format=output_format)
    tok, fmt = task.tokenizer, get_format(output_format)
    examples, windows = task.train_split.examples, task.windows["train"]
    assert len(examples) == len(windows) == len(dataset["train"])  # short sentences: one window each
    for e, w in zip(examples, windows):
        n = len(w.prompt)
        assert e.input_ids == w.prompt + w.target and len(e.input_ids) <= 256
        assert e.labels[:n] == [IGNORE] * n  # no loss on any prompt token
        assert e.labels[n:] == e.input_ids[n:] == w.target  # the answer, its EOS included
        sent = dataset["train"][e.sentence]
        assert w.target[-1] == tok.eos_token_id
        assert tok.decode(w.target[:-1]) == fmt.render(sent.words, sent.tags)
        assert (e.word_start, e.first_tokens) == (0, [])
    assert task.windowed_words == {"train": 0, "dev": 0, "test": 0}
    assert task.truncated_subtokens == {"train": 0, "dev": 0, "test": 0}
    # dev and test hold the prompts alone: their gold is for scoring only
    assert all(e.input_ids == w.prompt and set(e.labels) == {IGNORE}
               for e, w in zip(task.splits["dev"].examples, task.windows["dev"]))


@pytest.mark.parametrize("lm", ["plain_lm", "chat_lm"])
def test_the_prompt_is_the_instruction_then_the_sentence_in_the_chat_template_where_there_is_one(request, lm, dataset):
    task = task_without_model(request.getfixturevalue(lm), dataset, output_format="spans")
    window = task.windows["dev"][0]
    text = task.tokenizer.decode(window.prompt)
    sent = dataset["dev"][0]
    body = get_format("spans").instruction(TYPES) + "\n" + SENTENCE + " ".join(sent.words)
    if lm == "chat_lm":
        assert text == f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"
    else:
        assert text == body + PLAIN_CUE
    assert "LOC, ORG, PER" in text  # the data set's entity types, named


def test_a_word_budget_too_small_for_the_prompt_is_refused(plain_lm, dataset):
    with pytest.raises(ValueError, match="max_length 40 leaves no room"):
        task_without_model(plain_lm, dataset, train=TrainConfig(max_length=40))


DOCS = documents(["a1 a2", "b1 b2", "c1 c2"], ["d1 d2", "e1 e2"])


def test_generative_context_stops_at_document_edges(plain_lm):
    task = task_without_model(plain_lm, DOCS, context_sentences=2, train=TrainConfig(max_length=512))
    lines = [prompt_lines(task, w) for w in task.windows["dev"]]
    sentence_lines = [line[-1] for line in lines]
    assert sentence_lines == [SENTENCE + s for s in ("a1 a2", "b1 b2", "c1 c2", "d1 d2", "e1 e2")]
    context = [[line for line in ls if line.startswith("Context")] for ls in lines]
    assert context == [
        [CONTEXT_AFTER + "b1 b2 c1 c2"],  # the first sentence of a document: nothing before it
        [CONTEXT_BEFORE + "a1 a2", CONTEXT_AFTER + "c1 c2"],
        [CONTEXT_BEFORE + "a1 a2 b1 b2"],  # the last: nothing after it, not the next document's first sentence
        [CONTEXT_AFTER + "e1 e2"],  # the next document's first: not the previous document's last
        [CONTEXT_BEFORE + "d1 d2"],
    ]
    # the answer is about the target sentence alone
    assert [task.tokenizer.decode(w.target[:-1]) for w in task.windows["train"]] == ["a1 a2", "b1 b2", "c1 c2",
                                                                                    "d1 d2", "e1 e2"]


def test_generative_context_is_trimmed_to_fit_keeping_the_nearest_words(plain_lm):
    before = " ".join(f"Paris{i}" for i in range(40))
    after = " ".join(f"Oslo{i}" for i in range(40))
    data = documents([before, "John/B-PER works", after])
    roomy = task_without_model(plain_lm, data, context_sentences=1, train=TrainConfig(max_length=1024))
    full = len(roomy.splits["train"].examples[1].input_ids)
    tight = task_without_model(plain_lm, data, context_sentences=1, train=TrainConfig(max_length=full - 60))
    for name in ("train", "dev"):
        w = next(w for w in tight.windows[name] if w.sentence == 1)
        assert len(w.prompt) + len(w.target) <= full - 60
        lines = prompt_lines(tight, w)
        kept_before = next(line for line in lines if line.startswith(CONTEXT_BEFORE)).removeprefix(CONTEXT_BEFORE)
        kept_after = next(line for line in lines if line.startswith(CONTEXT_AFTER)).removeprefix(CONTEXT_AFTER)
        assert before.endswith(" " + kept_before) and after.startswith(kept_after + " ")  # nearest words, both sides
        assert lines[-1] == SENTENCE + "John works"  # the sentence itself is never cut for context
    # trimmed, not dropped: the room left is used to within a word or two
    example = next(e for e in tight.train_split.examples if e.sentence == 1)
    assert len(example.input_ids) >= full - 60 - 12


def test_a_long_sentence_is_split_into_windows_that_fit_and_cover_every_word(plain_lm):
    words = " ".join(f"John/B-PER Smith/I-PER visited Paris{i}/B-LOC ." for i in range(12))
    data = documents([words, "Mary/B-PER won"])
    task = task_without_model(plain_lm, data, train=TrainConfig(max_length=200))
    n = len(data["train"][0].words)
    for name in ("train", "dev"):
        windows = [w for w in task.windows[name] if w.sentence == 0]
        assert len(windows) > 1
        assert [w.start for w in windows[1:]] == [w.end for w in windows[:-1]] and windows[-1].end == n
        assert task.splits[name].windowed_words == n - windows[0].end
    assert all(len(e.input_ids) <= 200 for e in task.train_split.examples)
    assert task.train_split.truncated_subtokens == 0


def test_dev_and_test_windows_and_prompts_come_from_the_words_alone(plain_lm):
    words = " ".join(f"John/B-PER Smith/I-PER visited Paris{i}/B-LOC ." for i in range(12))
    data = documents([words, "Mary/B-PER won"])
    blind = NerDataset({"train": data["train"], "dev": [dataclasses.replace(s, tags=("O",) * len(s.words))
                                                        for s in data["dev"]], "test": data["test"]},
                       source="test", labels=data.labels)
    a = task_without_model(plain_lm, data, context_sentences=1, train=TrainConfig(max_length=200))
    b = task_without_model(plain_lm, blind, context_sentences=1, train=TrainConfig(max_length=200))
    assert a.windows["dev"] == b.windows["dev"]
    # training windows leave room for the gold answer itself, markup included: shorter ones here
    spans = {name: [(w.start, w.end) for w in a.windows[name] if w.sentence == 0] for name in ("train", "dev")}
    assert len(spans["train"]) > len(spans["dev"]) and spans["train"][-1][1] == spans["dev"][-1][1] == 60


def test_max_new_tokens_covers_the_longest_answer_the_words_allow(plain_lm, dataset):
    for output_format in sorted(FORMATS):
        task = task_without_model(plain_lm, dataset, output_format=output_format)
        fmt = get_format(output_format)
        for w in task.windows["dev"]:
            words = dataset["dev"][w.sentence].words
            everything = fmt.render(words, ["B-LOC"] * len(words))  # every word an entity
            assert w.max_new_tokens > len(task.tokenizer(everything, add_special_tokens=False)["input_ids"])


def test_left_padding_and_the_first_eos_end_an_answer():
    ids, mask = left_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert until_eos([4, 9, 2, 9, 9], eos=9) == ([4], 2)  # what came after the first EOS is padding
    assert until_eos([4, 4], eos=9) == ([4, 4], 2)  # stopped by max_new_tokens


# ---------------------------------------------------------------- the model: build, generate, train, save, run


def perturbed(built, scale=0.5) -> None:
    """Non-trivial LoRA weights, as after training (peft starts them as a no-op)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in built.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)


def test_a_generative_qlora_case_is_the_causal_lm_with_lora_alone(plain_lm, dataset, tmp_path):
    import bitsandbytes as bnb
    from nerbench_core.backends.attention import decoder_layers

    built = build(spec_for(plain_lm, method="qlora"), dataset.labels, tmp_path)
    base = built.model.get_base_model()
    assert type(base).__name__ == "Qwen2ForCausalLM" and built.head == "lm_head"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    assert not isinstance(base.lm_head, bnb.nn.Linear4bit) and not base.lm_head.weight.requires_grad
    trainable = [n for n, p in built.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in built.model.parameters() if p.requires_grad)
    backbone, layers = decoder_layers(built.model)
    assert not backbone._forward_pre_hooks and not any(layer._forward_pre_hooks for layer in layers)
    assert built.details["paradigm"] == "generative" and built.details["bidirectional_layers"] == 0


def test_batches_padded_on_the_left_generate_what_each_prompt_does_alone(plain_lm, dataset, tmp_path):
    spec = spec_for(plain_lm, context_sentences=1)
    built = build(spec, dataset.labels, tmp_path)
    perturbed(built)
    task = GenerativeTask(spec, built, dataset)
    built.model.eval()
    windows = task.windows["dev"]
    batched, generated = task.generate(built.model, windows)
    assert batched == [task.generate(built.model, [w])[0][0] for w in windows]
    assert generated > 0


@pytest.mark.parametrize("method, output_format, lm", [("qlora", "inline", "plain_lm"), ("lora", "spans", "chat_lm")])
def test_a_generative_case_trains_through_the_recipe_and_predicts_end_to_end(request, method, output_format, lm,
                                                                             dataset, tmp_path):
    spec = with_train(spec_for(request.getfixturevalue(lm), method=method, output_format=output_format,
                               context_sentences=1), max_steps=3)
    built = build(spec, dataset.labels, tmp_path)
    task = GenerativeTask(spec, built, dataset)
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}

    def evaluate(model):
        dev = task.predict(model, "dev")
        return {**score(task.gold("dev"), dev.tags, interval=False), "predictions": dev}

    outcome = train(built, spec, task.train_split, evaluate, tmp_path / "out")
    assert outcome.steps == 3 and outcome.real_tokens > 0 and len(outcome.dev_history) == 1
    assert all(torch.isfinite(torch.tensor(p["loss"])) for p in outcome.loss_curve if "loss" in p)
    changed = {n for n, p in built.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)  # the LM head and the base weights stay as they were
    assert built.model.training  # prediction put training mode back

    test = task.predict(built.model, "test")
    assert [len(t) for t in test.tags] == [len(s.words) for s in dataset["test"]]
    assert all(t == "O" or t[:2] in ("B-", "I-") for sent in test.tags for t in sent)
    assert test.parse["sentences"] == len(task.windows["test"])
    assert set(test.parse) >= {"entities", "malformed", "hallucinated", "unknown_type", "word_edits", "empty"}
    assert test.generated_tokens_per_second > 0 and test.sentences_per_second > 0
    assert "f1" in score(task.gold("test"), test.tags)  # scored by the same path as the head paradigm
    assert task.saved(test, "test").pred == test.tags


def test_a_model_trained_on_the_targets_learns_to_write_the_format_and_to_stop(plain_lm, dataset, tmp_path):
    """What the loss masking and the EOS are for: a few hundred examples of prompt -> answer, and the tiny model writes
    answers the parser reads, and ends them with EOS instead of running to max_new_tokens."""
    spec = with_train(spec_for(plain_lm, method="full", lora=None), epochs=30, learning_rate=3e-3, batch_size=4)
    built = build(spec, dataset.labels, tmp_path)
    task = GenerativeTask(spec, built, dataset)
    train(built, spec, task.train_split, lambda m: {"f1": 0.0}, tmp_path / "out", select_on_dev=False)
    dev = task.predict(built.model, "dev")
    assert dev.parse["malformed"] == 0 and dev.parse["entities"] > 0
    built.model.eval()
    _, generated = task.generate(built.model, task.windows["dev"])
    assert generated < sum(w.max_new_tokens - 8 for w in task.windows["dev"])  # every answer stopped at its EOS


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_a_saved_generative_case_reloads_to_the_same_generations(plain_lm, dataset, tmp_path, method):
    spec = spec_for(plain_lm, method=method, output_format="inline")
    built = build(spec, dataset.labels, tmp_path)
    perturbed(built, scale=0.3)
    task = GenerativeTask(spec, built, dataset)
    built.model.eval()
    expected, _ = task.generate(built.model, task.windows["test"])
    folder = save_case(built, spec, dataset.labels, tmp_path / "saved")
    reloaded = load_case(folder, RunOptions(tmp_path))
    assert reloaded.head == "lm_head" and type(reloaded.model.get_base_model()).__name__ == "Qwen2ForCausalLM"
    again = GenerativeTask(spec, reloaded, dataset)
    reloaded.model.eval()
    assert again.generate(reloaded.model, again.windows["test"])[0] == expected
    assert again.predict(reloaded.model, "test").tags == task.predict(built.model, "test").tags


def test_run_case_runs_a_generative_spec_and_records_parse_counts_and_generation_rate(chat_lm, dataset, tmp_path):
    from nerbench_core.runner import run_case

    # bf16 where the CPU has it: prediction then generates under autocast, as on a GPU
    spec = with_train(spec_for(chat_lm, method="qlora", output_format="spans"), max_steps=2, bf16=True)
    result = run_case(spec, dataset, RunOptions(cache_dir=tmp_path, progress=False))
    record = result.record
    assert record.status == "passed" and record.model["paradigm"] == "generative"
    parse = record.metrics["test"]["parse"]
    assert parse["sentences"] == len(dataset["test"]) and "malformed" in parse
    assert record.cost["test_generated_tokens_per_second"] > 0
    assert [len(t) for t in result.predictions["test"].pred] == [len(s.words) for s in dataset["test"]]
    from nerbench_core.reporting.table import CASE_PARTS  # each part of the case timed, none twice

    parts = [record.cost[k] for k in CASE_PARTS]
    assert all(record.cost[k] > 0 for k in ("prepare_seconds", "trainer_setup_seconds", "scoring_seconds"))
    assert min(parts) >= 0 and sum(parts) <= record.cost["case_seconds"]


@pytest.fixture
def tokenizers(tmp_path):
    """The offline tokenizers folder of --synthetic runs (NERBENCH_TOKENIZERS), made here as tests/test_synthetic.py
    makes it."""
    bpe_tokenizer(tmp_path / "tokenizers" / "decoder")
    return tmp_path / "tokenizers"


def test_random_weights_write_nonsense_that_is_counted_not_raised(dataset, tmp_path, tokenizers):
    """--synthetic: a causal LM of a published architecture with random weights; its output parses to O's."""
    spec = ModelSpec(name="synthetic-gen", model="unused", architecture="tiny-qwen2", family="decoder",
                     method="qlora", backend="hf", paradigm="generative", output_format="inline",
                     train=TrainConfig(max_length=512, eval_batch_size=8, bf16=False))
    built = build_case(synthetic_spec(spec), dataset.labels,
                       RunOptions(cache_dir=tmp_path / "cache", tokenizers_dir=tokenizers))
    assert type(built.model.get_base_model()).__name__ == "Qwen2ForCausalLM"
    task = GenerativeTask(spec, built, dataset)
    dev = task.predict(built.model, "dev")
    assert [len(t) for t in dev.tags] == [len(s.words) for s in dataset["dev"]]
    parse = dev.parse
    assert parse["sentences"] == len(dataset["dev"])
    assert parse["word_edits"] + parse["malformed"] + parse["hallucinated"] + parse["unknown_type"] > 0
    # no EOS from random weights: every window ran to its bound, and those tokens were counted
    assert dev.generated_tokens_per_second > 0


def test_a_random_causal_lm_keeps_its_lm_head_tied_to_the_embeddings(tmp_path, tokenizers, monkeypatch):
    """Architectures such as Qwen1.5-0.5B share the embedding table with the LM head; the module-by-module
    materialization must not leave the head a second, separately random table."""
    from nerbench_core.architectures import architecture
    from nerbench_core.backends import synthetic

    tied = {**architecture("tiny-qwen2"), "tie_word_embeddings": True}
    monkeypatch.setattr(synthetic, "architecture", lambda name: dict(tied))
    options = RunOptions(cache_dir=tmp_path / "cache", tokenizers_dir=tokenizers)
    model = synthetic.random_model("random:tiny-qwen2", {}, torch.float32, None, options, causal_lm=True)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.lm_head.weight is model.get_input_embeddings().weight and not model.lm_head.weight.is_meta
