"""Model specs: a suite is data. One :class:`ModelSpec` per benchmark case, read from TOML suite files.

Every knob that changes how a case is built or trained is a field here, so that one training path
serves all cases and the spec hash says exactly what produced a result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

SUITES_DIR = Path(__file__).resolve().parent.parent / "bench" / "suites"
Family = Literal["encoder", "decoder"]
Method = Literal["full", "lora", "qlora"]
Attention = Literal["causal", "bidirectional"]
Paradigm = Literal["head", "generative"]
RANDOM = "random:"  # `model` of a --synthetic case: random weights in architecture NAME of architectures.toml
# Case names become pytest ids and file names (records, saved models, profiles): letters, digits and . _ - only,
# starting with a letter or digit, so that no derived path leaves its folder.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class SpecError(ValueError):
    """A suite file or spec is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 5e-5
    epochs: float = 3.0
    batch_size: int = 32
    # sentences a prediction batch holds at most; the head paradigm takes fewer where the memory would not hold them
    eval_batch_size: int = 64
    max_length: int = 128  # sub-tokens, special tokens included; longer sentences are split into windows
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42
    # true, false, or "auto": off where the activations fit in the memory left on the device once the model is
    # loaded, on where they do not (accel/memory.py): the speed of a large GPU, the memory of a small one.
    gradient_checkpointing: bool | Literal["auto"] = False
    bf16: bool = True  # used only where the device supports it (CUDA with bf16)
    group_by_length: bool = True  # length-grouped batches: far less padding on short CoNLL sentences
    # When set, training batches are built to hold at most this many tokens (padding included) instead of
    # a fixed sentence count; batch_size then only caps sentences per batch.
    # 0 or None: batches of batch_size sentences.
    max_tokens_per_batch: int | None = None
    # A Trainer optimizer name: "adamw_torch_fused", or "adamw_bnb_8bit" (8-bit states: 6 bytes less a weight).
    optimizer: str = "adamw_torch_fused"
    # Stop after this many optimizer steps (speed benchmarks); None trains the given epochs.
    max_steps: int | None = None
    # liger-kernel's fused RMSNorm and SwiGLU (Triton) for the model types it knows (Qwen2, Llama, ...),
    # where CUDA and liger-kernel are present; elsewhere, and for other models, this changes nothing.
    fused_kernels: bool = True
    # Regional torch.compile of the model's repeated layers (accel/compiling.py), hf backend; where on, inductor's
    # kernels take the place of liger-kernel's. Off by default: on the seed decoders it did not pay (it compiles
    # each layer variant for 15-20 s, and ran slower per step: docs/PERFORMANCE.md).
    torch_compile: bool = False
    # LoRA projections as one autograd function each (accel/lora_kernels.py) instead of peft's chain of modules:
    # the same arithmetic with far less host work a step, which bounds the decoders' steps on a GPU (docs/PERFORMANCE.md).
    fused_lora: bool = True
    # With fused_lora, on CUDA: the LoRA input gradient's product with the dropout mask added into the gradient by one
    # Triton kernel (accel/triton_kernels.py), where torch ran a matmul and two elementwise passes.
    fused_lora_backward: bool = True
    # Rotary position embeddings of q and k as one Triton kernel each, forward and backward (accel/rope.py), where
    # the model's modeling module has the standard rotation (Qwen2, Llama, ...) and on CUDA; transformers' own
    # elementwise chain elsewhere.
    fused_rope: bool = True
    # With fused_lora: the frozen 4-bit weights also kept dequantized in the compute dtype, so that no step
    # dequantizes them (16% of a Qwen1.5-7B step's GPU time). The same arithmetic, at the memory of a 16-bit copy of
    # the weights; "auto": where that fits beside the step's activations without gradient checkpointing (an 80 GB
    # GPU: every seed decoder; a 12 or 24 GB card: not the 7B and 14B), as QLoRA alone where it does not.
    keep_dequantized: bool | Literal["auto"] = "auto"
    # With fused_lora, on CUDA GPUs with FP8 tensor cores (Ada, Hopper and later): the frozen weights' matmuls (each
    # projection's x W^T and its input gradient) in float8 with a scale a token and a weight row (accel/fp8.py), the
    # weights kept as float8 instead of bf16 (where keep_dequantized keeps them). Not the bf16 arithmetic; F1 within
    # the seeds' noise of it (SmolLM2, docs/PERFORMANCE.md). It pays only where those matmuls are large: "auto" takes
    # it on Hopper GPUs (where it was measured) for the projections whose weights have both dimensions of at least
    # 4,096 (the 7B's and 14B's, not the smaller decoders'); true wherever the GPU can.
    fp8_matmuls: bool | Literal["auto"] = "auto"
    # Forward and backward of each training batch replayed from a CUDA graph (accel/cuda_graphs.py), batches padded to a
    # few shapes: a step then costs the host one call instead of thousands of kernel launches. Only on CUDA, without
    # torch.compile or the unsloth backend; with gradient checkpointing only where the LoRA dropout can be keyed by
    # step (accel/seeded_dropout.py).
    cuda_graphs: bool = True
    # Training batches packed into one row, each sentence attending only to itself through a variable-length
    # attention kernel (accel/packing.py), instead of padded to a block: the padding's work is not done, and batches
    # are cut by their real tokens. The same arithmetic per sentence. Only on CUDA with torch's varlen_attn, in bf16 or
    # fp16, for the head paradigm of models whose attention goes through transformers' attention interface, without
    # attention dropout (not bert-base-cased's), sliding windows or learned absolute positions, with trained weights in
    # the compute dtype, and where the kernel's backward buffer fits beside the activations without checkpointing (not
    # the 14B on a 12 GB card); padded batches elsewhere.
    packed_sequences: bool = True
    # The generative paradigm's greedy decoding with a static cache, each step replayed from a CUDA graph
    # (accel/graphed_generation.py): the same tokens as transformers' generate, without a launch from Python for
    # every kernel of every step. Only on CUDA and the hf backend; elsewhere generate runs.
    graphed_generation: bool = True
    # bitsandbytes' optimizer step without its device synchronization after each parameter (accel/bnb_step.py), for
    # its unpaged optimizers on CUDA (the 14B's 8-bit AdamW: 561 synchronizations a step): the same kernels in the same
    # order, so the same parameters bit for bit (GPU test), without the GPU idling while each next update is launched.
    bnb_without_syncs: bool = True

    def __post_init__(self) -> None:
        problems = [f"{k} = {getattr(self, k)!r}: {why}" for k, ok, why in (
            ("learning_rate", 0 < self.learning_rate < math.inf, "must be > 0 and finite"),
            ("epochs", 0 < self.epochs < math.inf, "must be > 0 (training nothing would pass any floor) and finite"),
            ("seed", 0 <= self.seed < 2**32, "must be in [0, 2**32)"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1"),
            ("max_length", self.max_length >= 4, "must be >= 4 (special tokens and a word)"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("max_tokens_per_batch", not self.max_tokens_per_batch or self.max_tokens_per_batch >= 1, "must be >= 1"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "must be >= 1"),
        ) if not ok]
        if problems:  # (the optimizer's name is checked against the Trainer's before training: startup.py)
            raise SpecError("; ".join(problems))


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # every linear projection of attention and MLP (Llama/Qwen2/Mistral names); the head is never a target
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.target_modules:
            raise SpecError(f"lora = {{ r = {self.r}, alpha = {self.alpha}, dropout = {self.dropout} }}: r >= 1, "
                            "alpha > 0, 0 <= dropout < 1 and at least one target module")


@dataclass(frozen=True)
class Floor:
    """An F1 floor, for the data set it was measured on only: elsewhere a case has no floor and passes."""

    data: str = ""  # a data set of bench/datasets.toml (e.g. "conll2003"), or a data fingerprint
    f1: float | None = None  # full run: test micro F1 (conlleval-compatible) must reach this
    quick: float | None = None  # the same under --quick
    source: str = ""  # where the number came from (a baseline run, a paper), kept beside it

    def __post_init__(self) -> None:
        from .known_data import known_datasets

        if not self.data:
            raise SpecError("a floor needs `data`: the data set it was measured on (a name in bench/datasets.toml, "
                            "e.g. \"conll2003\", or the data fingerprint a record shows)")
        if self.data not in known_datasets() and not re.fullmatch(r"[0-9a-f]{16}", self.data):
            raise SpecError(f"floor data {self.data!r}: neither a data set of bench/datasets.toml "
                            f"({', '.join(known_datasets())}) nor a data fingerprint (16 hex digits, as records show)")
        for k in ("f1", "quick"):
            v = getattr(self, k)
            if v is not None and not 0 <= v <= 1:
                raise SpecError(f"floor {k} = {v}: F1 floors are fractions in [0, 1] (0.88, not 88)")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the pytest id
    model: str  # hub id, local folder, or "package:IMPORT_NAME/sub/path" for a model shipped in a package
    family: Family = "encoder"
    method: Method = "full"
    gguf_file: str | None = None  # a GGUF file inside `model`'s folder, loaded dequantized
    attention: Attention = "causal"  # decoders only; encoders are bidirectional by construction
    bidirectional_layers: int | None = None  # with attention="bidirectional": None = all layers, k = the last k
    backend: str = "auto"  # a name of backends/registry.py, or auto (= hf: faster over three epochs, PERFORMANCE.md)
    architecture: str | None = None  # name in architectures.toml: the exact shape, for --synthetic runs
    # head: a token-classification head on the last hidden states; generative (decoders): the model is fine-tuned
    # to write the sentence's entities in `output_format`, and its output is parsed back into tags
    paradigm: Paradigm = "head"
    output_format: str = "inline"  # generative: a name of prediction/formats.py (inline, spans)
    context_sentences: int = 0  # up to N neighbouring sentences of the same document fed as context
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSpec | None = None
    quick: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides under --quick
    # F1 floors, each for the data set it was measured on; `floor = {...}` in a suite file is one
    floor: tuple[Floor, ...] = ()
    seeds: tuple[int, ...] = ()  # run the case once per seed (each its own pytest item); () = train.seed alone
    suite: str = ""  # the suite file it came from

    def __post_init__(self) -> None:
        where = f"{self.suite or '<spec>'}: model {self.name!r}"
        from .backends.registry import CHOICES

        if not NAME.match(self.name):
            raise SpecError(f"{where}: name must be 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                            "or digit (it names files)")
        if self.backend not in CHOICES:
            raise SpecError(f"{where}: backend {self.backend!r} is not one of {', '.join(CHOICES)}")
        if self.paradigm == "generative" and (not self.is_decoder or self.attention != "causal"):
            raise SpecError(f"{where}: paradigm 'generative' is for decoders with causal attention (they write "
                            "their output left to right)")
        if self.paradigm == "generative":
            from .prediction.formats import FORMATS

            if self.output_format not in FORMATS:
                raise SpecError(f"{where}: output_format {self.output_format!r} is not one of {', '.join(FORMATS)}")
        if self.context_sentences < 0:
            raise SpecError(f"{where}: context_sentences must be >= 0")
        if len(set(self.seeds)) != len(self.seeds):
            raise SpecError(f"{where}: seeds {list(self.seeds)} repeat a seed")
        if any(not 0 <= seed < 2**32 for seed in self.seeds):
            raise SpecError(f"{where}: seeds {list(self.seeds)}: each must be in [0, 2**32)")
        if self.bidirectional_layers is not None and self.bidirectional_layers < 1:
            raise SpecError(f"{where}: bidirectional_layers must be >= 1 (or left out: every layer)")
        if self.method in ("lora", "qlora") and self.lora is None:
            object.__setattr__(self, "lora", LoraSpec())
        if self.family == "encoder" and self.lora is not None and \
                self.lora.target_modules == LoraSpec.__dataclass_fields__["target_modules"].default:
            raise SpecError(f"{where}: method {self.method!r} on an encoder needs lora.target_modules: the default "
                            f"names decoder projections ({', '.join(self.lora.target_modules)})")
        if self.method == "full" and self.lora is not None:
            raise SpecError(f"{where}: [lora] is set but method is 'full'")
        if self.family == "encoder" and self.attention == "bidirectional":
            raise SpecError(f"{where}: attention applies to decoders; encoders are already bidirectional")
        if self.bidirectional_layers is not None and self.attention != "bidirectional":
            raise SpecError(f"{where}: bidirectional_layers needs attention = 'bidirectional'")
        unknown = set(self.quick) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise SpecError(f"{where}: [quick] has unknown keys {sorted(unknown)}")
        hints = get_type_hints(TrainConfig)
        quick = {k: _coerce(v, hints[k], f"{where}: quick.{k}") for k, v in self.quick.items()}
        object.__setattr__(self, "quick", quick)
        try:  # the quick schedule must be a valid one too
            dataclasses.replace(self.train, **quick)
        except SpecError as err:
            raise SpecError(f"{where}: quick: {err}") from None

    def for_run(self, quick: bool, **overrides: Any) -> "ModelSpec":
        """The spec as it runs: quick overrides applied, then the user's (e.g. --backend)."""
        spec = self
        if quick and self.quick:
            spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **self.quick))
        train_over = {k: v for k, v in overrides.items() if k in TrainConfig.__dataclass_fields__}
        top_over = {k: v for k, v in overrides.items() if k not in train_over}
        if train_over:
            spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **train_over))
        if top_over.get("method") == "full":  # a LoRA case fine-tuned whole: its adapter's settings go with the method
            top_over["lora"] = None
        return dataclasses.replace(spec, **top_over) if top_over else spec

    def floor_for(self, quick: bool, data: "DataIdentity") -> tuple[float | None, str]:
        """The F1 floor for a run on ``data`` (quick or full), or None and why there is none."""
        for floor in self.floor:
            if data.matches(floor.data):
                value = floor.quick if quick else floor.f1
                if value is None:
                    return None, f"no {'quick ' if quick else ''}floor for {floor.data}"
                return value, f"floor for {floor.data}: {floor.source or 'source unstated'}"
        if not self.floor:
            return None, "no floor set"
        named = ", ".join(f.data for f in self.floor)
        return None, f"no floor for this data ({data.name or data.fingerprint}; floors: {named})"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, seed: bool = True) -> str:
        """Hash of everything that changes the result: not the name, floors, seeds or where it was read from; with
        ``seed`` false not the training seed either (the configuration shared by a case's seeds). The levers' "auto"
        decisions, which follow the hardware (memory, FP8 on Hopper), are not part of it: a record says what was
        decided (``record.model["accel"]``), and a --label or --gpu-memory run has keys of its own (runner.key_for)."""
        d = self.to_dict()
        for k in ("name", "floor", "suite", "quick", "seeds"):
            d.pop(k)
        if not seed:
            d["train"].pop("seed")
        if d["paradigm"] == "head":  # a field added later: head-paradigm hashes stay those of earlier records
            d.pop("paradigm"), d.pop("output_format")
        if not d["context_sentences"]:
            d.pop("context_sentences")
        if d["train"]["graphed_generation"]:  # a field added later, at its default: earlier records' hashes stay
            d["train"].pop("graphed_generation")
        d["train"].pop("bnb_without_syncs")  # the same arithmetic either way
        if d["method"] != "qlora" or d["train"]["fp8_matmuls"] is not True:
            # the same, at false (its first default) and at "auto", which is bf16 but for large projections on Hopper
            # GPUs: a choice of the hardware's, as the other levers' "auto" (the record says what was decided); FP8
            # takes the place of 4-bit weights' dequantized copy, so that for other methods no value changes anything
            d["train"].pop("fp8_matmuls")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]

    def seeded(self, seed: int) -> "ModelSpec":
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))

    @property
    def run_seeds(self) -> tuple[int, ...]:
        return self.seeds or (self.train.seed,)

    @property
    def is_decoder(self) -> bool:
        return self.family == "decoder"


# ---------------------------------------------------------------- reading suite files


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a TOML value against a dataclass field's type hint (TOML already gives typed values)."""
    origin = get_origin(hint)
    args = get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is Literal:
        if value not in args:
            raise SpecError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (Union, types.UnionType):  # X | None, bool | Literal["auto"]: the first that takes the value
        if value is None and type(None) in args:
            return None
        problems = []
        for inner in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, inner, where)
            except SpecError as e:
                problems.append(str(e).removeprefix(f"{where}: "))
        raise SpecError(f"{where}: {'; '.join(problems)}")
    if origin is tuple:  # tuple[X, ...]: a list of X; a single table where X is a table (floor = {...})
        inner = args[0]
        if isinstance(value, dict) and dataclasses.is_dataclass(inner):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise SpecError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a table, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        raise SpecError(f"{where}: {e}") from None
    except SpecError as e:  # a value out of range, found by the class itself
        message = str(e)
        raise SpecError(message if message.startswith(where) or ": model " in message else f"{where}: {message}") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_suite(path: str | Path) -> list[ModelSpec]:
    """Read a suite file: optional ``[defaults.encoder]`` / ``[defaults.decoder]`` tables, then ``[[model]]``."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: suite file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"defaults", "model"})
    if unknown:
        raise SpecError(f"{path}: unknown top-level key(s) {', '.join(unknown)} (expected [defaults.*] and [[model]])")
    if not isinstance(doc.get("model", []), list):
        raise SpecError(f"{path}: [model] is a single table; each model is an entry of the array [[model]] "
                        "(two brackets)")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - {"encoder", "decoder"}:
        raise SpecError(f"{path}: [defaults] holds [defaults.encoder] and [defaults.decoder] tables only")
    specs, seen = [], set()
    for i, entry in enumerate(doc.get("model", [])):
        if not isinstance(entry, dict):
            raise SpecError(f"{path}: [[model]] #{i + 1}: expected a table")
        where = f"{path}: [[model]] #{i + 1}" + (f" ({entry['name']})" if "name" in entry else "")
        family = entry.get("family", "encoder")
        merged = _merge(defaults.get(family, {}), entry)
        spec = _build(ModelSpec, {**merged, "suite": str(path)}, where)
        if spec.name in seen:
            raise SpecError(f"{where}: duplicate name {spec.name!r}")
        seen.add(spec.name)
        specs.append(spec)
    if not specs:
        raise SpecError(f"{path}: no [[model]] entries")
    return specs


def resolve_suite(choice: str) -> list[ModelSpec]:
    """``seed``, ``offline``, ``all`` (every suite in bench/suites) or a path to a suite file."""
    if choice == "all":
        return [s for p in sorted(SUITES_DIR.glob("*.toml")) for s in load_suite(p)]
    candidate = SUITES_DIR / f"{choice}.toml"
    if candidate.is_file():
        return load_suite(candidate)
    if Path(choice).is_file():
        return load_suite(choice)
    known = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.toml")))
    raise SpecError(f"--suite {choice!r}: not a suite name ({known}, all) nor a suite file")


def spec_from_dict(data: dict, where: str = "<spec>") -> ModelSpec:
    """A spec back from its ``to_dict()`` form (records, saved cases), validated like a suite entry."""
    return _build(ModelSpec, data, where)


# spec fields (beside TrainConfig's) that --set may change for every case
SETTABLE = ("paradigm", "output_format", "context_sentences", "attention", "backend", "method")


def parse_override(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE`` for a TrainConfig field (or one of SETTABLE); VALUE is read as a TOML value (1e-4, true,
    64, "x")."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    hints = {**get_type_hints(TrainConfig), **{k: get_type_hints(ModelSpec)[k] for k in SETTABLE}}
    if not sep or key not in hints:
        raise SpecError(f"--set {text!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(hints))}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    value = _coerce(value, hints[key], f"--set {key}")
    if key in TrainConfig.__dataclass_fields__:
        try:
            dataclasses.replace(TrainConfig(), **{key: value})
        except SpecError as err:
            raise SpecError(f"--set {key}: {err}") from None
    return key, value
