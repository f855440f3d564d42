import dataclasses
import os

import pytest

from nerbench_core.specs import LoraSpec, SpecError, load_suite, resolve_suite


def test_seed_suite_is_bert_and_five_qwen_models():
    specs = resolve_suite("seed")
    sizes = ["0.5b", "1.8b", "4b", "7b", "14b"]
    assert [s.name for s in specs] == (["bert-base-cased"] + [f"qwen1.5-{n}" for n in sizes]
                                       + [f"qwen1.5-{n}-generative" for n in sizes])
    assert {s.paradigm for s in specs[6:]} == {"generative"} and {s.architecture for s in specs[6:]} == {
        s.architecture for s in specs[1:6]}  # the same five models, writing their entities out
    bert, qwen7, qwen14 = specs[0], specs[4], specs[5]
    assert (bert.method, bert.train.epochs) == ("full", 3.0)
    assert (qwen7.model, qwen7.method, qwen7.train.learning_rate, qwen7.lora.r, qwen7.lora.alpha) == (
        "Qwen/Qwen1.5-7B", "qlora", 1e-3, 16, 32)
    assert (qwen7.train.gradient_checkpointing, qwen7.train.max_tokens_per_batch) == ("auto", 1024)  # defaults
    # the 14B keeps the decoder defaults it does not override, and fits a 12 GB card by its own
    assert (qwen14.train.max_tokens_per_batch, qwen14.train.optimizer) == (1024, "adamw_bnb_8bit")
    assert qwen14.train.gradient_checkpointing == "auto" and qwen14.lora.r == 16  # on for a 12 GB card
    # prediction batches up to 1,024 sentences, cut by the memory where a card is small (prediction/head.py)
    assert (bert.train.eval_batch_size, qwen7.train.eval_batch_size, qwen14.train.eval_batch_size) == (1024,) * 3
    quick = qwen7.for_run(quick=True)  # --quick trains on 1,000 sentences: small batches there
    assert (quick.train.batch_size, quick.train.max_tokens_per_batch, quick.train.epochs) == (16, 0, 1)


def test_every_suite_loads_and_names_are_unique():
    specs = resolve_suite("all")
    assert len({s.name for s in specs}) == len(specs)
    assert {"minilm", "smollm2-lora-causal", "smollm2-lora-bidir", "smollm2-qlora"} <= {s.name for s in specs}


def write(tmp_path, text):
    p = tmp_path / "suite.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("body, message", [
    ('[[model]]\nname = "x"\nmodel = "m"\nlearning_rate = 1e-4\n', "unknown key(s) learning_rate"),
    ('[[model]]\nname = "x"\nmodel = "m"\nmethod = "qlorra"\n', "'qlorra' is not one of"),
    ('[[model]]\nname = "x"\nmodel = "m"\ntrain = { epochs = "three" }\n', "train.epochs: expected float"),
    ('[[model]]\nname = "x"\n', "missing 1 required positional argument: 'model'"),
    ('[[model]]\nname = "x"\nmodel = "m"\nfamily = "encoder"\nattention = "bidirectional"\n', "attention applies to decoders"),
    ('[[model]]\nname = "x"\nmodel = "m"\nfamily = "encoder"\nmethod = "lora"\n', "on an encoder needs lora.target_modules"),
    ('[[model]]\nname = "x"\nmodel = "m"\nquick = { epoch = 1 }\n', "[quick] has unknown keys"),
    ('[[model]]\nname = "x"\nmodel = "m"\n[[model]]\nname = "x"\nmodel = "n"\n', "duplicate name 'x'"),
    ('[model\n', "not valid TOML"),
])
def test_bad_suites_name_the_file_and_key(tmp_path, body, message):
    p = write(tmp_path, body)
    with pytest.raises(SpecError) as err:
        load_suite(p)
    assert str(p) in str(err.value) and message in str(err.value)


def test_unknown_suite_choice_lists_the_known_ones():
    with pytest.raises(SpecError, match="--suite 'nope'.*offline.*seed"):
        resolve_suite("nope")


def test_hash_follows_what_changes_results_and_quick_overrides_apply(tmp_path):
    (spec,) = load_suite(write(tmp_path, '[[model]]\nname = "x"\nmodel = "m"\nquick = { epochs = 1 }\n'
                                         'floor = { data = "conll2003", f1 = 0.5 }\n'))
    assert spec.hash() == dataclasses.replace(spec, floor=(dataclasses.replace(spec.floor[0], f1=0.9),)).hash()
    assert spec.hash() == dataclasses.replace(spec, seeds=(1, 2)).hash()  # seeds name runs, not one run
    assert spec.hash() != spec.seeded(7).hash() and spec.hash(seed=False) == spec.seeded(7).hash(seed=False)
    assert spec.hash() != dataclasses.replace(spec, train=dataclasses.replace(spec.train, learning_rate=1.0)).hash()
    quick = spec.for_run(quick=True)
    assert quick.train.epochs == 1.0 and spec.train.epochs == 3.0 and quick.hash() != spec.hash()
    assert spec.for_run(quick=False, backend="hf", epochs=2).train.epochs == 2
    # --set method: a LoRA case fine-tuned whole leaves its adapter's settings; made LoRA, it gets the default ones
    lora = dataclasses.replace(spec, family="decoder", method="lora", lora=LoraSpec(r=8))
    assert lora.for_run(quick=False, method="full").lora is None
    assert lora.for_run(quick=False, method="qlora").lora.r == 8
    assert dataclasses.replace(spec, family="decoder").for_run(quick=False, method="lora").lora == LoraSpec()
    from nerbench_core.data import DataIdentity

    conll, other = DataIdentity("conll2003", "fp1"), DataIdentity("", "fp2")
    assert spec.floor_for(False, conll) == (0.5, "floor for conll2003: source unstated")
    assert spec.floor_for(True, conll) == (None, "no quick floor for conll2003")
    assert spec.floor_for(False, other) == (None, "no floor for this data (fp2; floors: conll2003)")


def test_command_line_overrides_are_typed_and_checked():
    from nerbench_core.specs import parse_override

    assert parse_override("batch_size=64") == ("batch_size", 64)
    assert parse_override("learning_rate=1e-4") == ("learning_rate", 1e-4)
    assert parse_override("group_by_length=false") == ("group_by_length", False)
    assert parse_override("epochs=2") == ("epochs", 2.0)
    with pytest.raises(SpecError, match="--set 'batchsize=64': expected KEY=VALUE with KEY one of"):
        parse_override("batchsize=64")
    with pytest.raises(SpecError, match="--set batch_size: expected int"):
        parse_override("batch_size=many")
    assert parse_override("gradient_checkpointing=auto") == ("gradient_checkpointing", "auto")
    assert parse_override("gradient_checkpointing=true") == ("gradient_checkpointing", True)
    assert parse_override("max_tokens_per_batch=0") == ("max_tokens_per_batch", 0)
    with pytest.raises(SpecError, match="--set gradient_checkpointing: expected bool, got 'sometimes'; "
                                        "'sometimes' is not one of 'auto'"):
        parse_override("gradient_checkpointing=sometimes")


def test_token_budget_batches_respect_the_budget_and_cover_every_sentence():
    import random

    from nerbench_core.training.batching import TokenBudgetBatches

    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(1000)]
    sampler = TokenBudgetBatches(lengths, max_tokens=512, max_sentences=64, seed=1)
    for _ in range(2):  # two epochs: each a permutation of all sentences, in new batches
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert all(len(b) <= 64 and max(lengths[i] for i in b) * len(b) <= 512 for b in batches)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert sum(lengths) / padded > 0.9  # sorted pools leave little padding


def test_xdist_workers_get_gpus_round_robin():
    from nerbench_core.startup import worker_gpu

    assert [worker_gpu(f"gw{i}", ["0", "1"]) for i in range(4)] == ["0", "1", "0", "1"]
    assert worker_gpu("gw1", "2, 3".split(",")) == "3"  # from --gpus or CUDA_VISIBLE_DEVICES
    assert worker_gpu("gw0", []) is None  # no GPU: nothing to pin


@pytest.mark.parametrize("worker, gpu, shared_by", [("gw0", "0", 2), ("gw1", "1", 1), ("gw2", "0", 2)])
def test_each_worker_knows_how_many_share_its_gpu(monkeypatch, worker, gpu, shared_by):
    from types import SimpleNamespace

    from nerbench_core.startup import pin_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    config = SimpleNamespace(workerinput={"workerid": worker, "workercount": 3}, getoption=lambda name: "0,1")
    # three workers on two GPUs: gw0 and gw2 split GPU 0
    assert (pin_gpu(config), os.environ["CUDA_VISIBLE_DEVICES"]) == (shared_by, gpu)


def test_one_process_uses_one_gpu(monkeypatch):
    """Without -n, the first of several visible GPUs: the Trainer would otherwise wrap the model in DataParallel."""
    from types import SimpleNamespace

    from nerbench_core.startup import pin_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    config = SimpleNamespace(option=SimpleNamespace(numprocesses=None), getoption=lambda name: None)
    assert pin_gpu(config) == 1 and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    config.option.numprocesses = 2  # the xdist controller trains nothing: its workers pin their own
    assert pin_gpu(config) == 1 and os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
