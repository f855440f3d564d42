"""Model specs: a suite is data. One :class:`ModelSpec` per benchmark case, read from TOML suite files.

Every knob that changes how a case is built or trained is a field here, so that one training path
serves all cases and the spec hash says exactly what produced a result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

SUITES_DIR = Path(__file__).resolve().parent.parent / "bench" / "suites"
Family = Literal["encoder", "decoder"]
Method = Literal["full", "lora", "qlora"]
Attention = Literal["causal", "bidirectional"]
Backend = Literal["auto", "hf", "unsloth"]
RANDOM = "random:"  # `model` of a --synthetic case: random weights in architecture NAME of architectures.toml


class SpecError(ValueError):
    """A suite file or spec is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 5e-5
    epochs: float = 3.0
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128  # sub-tokens, special tokens included; longer sentences are split into windows
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42
    # true, false, or "auto": off where the activations fit in the memory left on the device once the model is
    # loaded, on where they do not (activations.py): the speed of a large GPU, the memory of a small one.
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
    # Regional torch.compile of the model's repeated layers (compiling.py), hf backend; where on, inductor's fused
    # kernels take the place of liger-kernel's. Off by default: on the seed decoders it did not pay (it compiles
    # each layer variant for 15-20 s, and ran slower per step: docs/PERFORMANCE.md).
    torch_compile: bool = False
    # LoRA projections as one autograd function each (lora_kernels.py) instead of peft's chain of modules: the same
    # arithmetic with far less host work a step, which bounds the decoders' steps on a GPU (docs/PERFORMANCE.md).
    fused_lora: bool = True
    # With fused_lora: the frozen 4-bit weights also kept dequantized in the compute dtype, so that no step
    # dequantizes them (16% of a Qwen1.5-7B step's GPU time). The same arithmetic, at the memory of a 16-bit copy of
    # the weights; "auto": where that fits beside the step's activations without gradient checkpointing (an 80 GB
    # GPU: every seed decoder; a 12 or 24 GB card: not the 7B and 14B), as QLoRA alone where it does not.
    keep_dequantized: bool | Literal["auto"] = "auto"
    # Forward and backward of each training batch replayed from a CUDA graph (cuda_graphs.py), batches padded to a few
    # shapes: a step then costs the host one call instead of thousands of kernel launches. Only on CUDA, without
    # gradient checkpointing (a small card's large model trains eagerly), torch.compile or the unsloth backend.
    cuda_graphs: bool = True


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # every linear projection of attention and MLP (Llama/Qwen2/Mistral names); the head is never a target
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Floor:
    f1: float = 0.0  # full run: test micro F1 (conlleval-compatible) must reach this
    quick: float = 0.0  # the same under --quick
    source: str = ""  # where the number came from (a baseline run, a paper), kept beside it


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the pytest id
    model: str  # hub id, local folder, or "package:IMPORT_NAME/sub/path" for a model shipped in a package
    family: Family = "encoder"
    method: Method = "full"
    gguf_file: str | None = None  # a GGUF file inside `model`'s folder, loaded dequantized
    attention: Attention = "causal"  # decoders only; encoders are bidirectional by construction
    bidirectional_layers: int | None = None  # with attention="bidirectional": None = all layers, k = the last k
    backend: Backend = "auto"  # auto: hf (faster than unsloth over three epochs here: docs/PERFORMANCE.md)
    architecture: str | None = None  # name in architectures.toml: the exact shape, for --synthetic runs
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSpec | None = None
    quick: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides under --quick
    floor: Floor = field(default_factory=Floor)
    suite: str = ""  # the suite file it came from

    def __post_init__(self) -> None:
        where = f"{self.suite or '<spec>'}: model {self.name!r}"
        if self.method in ("lora", "qlora") and self.lora is None:
            object.__setattr__(self, "lora", LoraSpec())
        if self.method == "full" and self.lora is not None:
            raise SpecError(f"{where}: [lora] is set but method is 'full'")
        if self.family == "encoder" and self.attention == "bidirectional":
            raise SpecError(f"{where}: attention applies to decoders; encoders are already bidirectional")
        if self.bidirectional_layers is not None and self.attention != "bidirectional":
            raise SpecError(f"{where}: bidirectional_layers needs attention = 'bidirectional'")
        unknown = set(self.quick) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise SpecError(f"{where}: [quick] has unknown keys {sorted(unknown)}")

    def for_run(self, quick: bool, **overrides: Any) -> "ModelSpec":
        """The spec as it runs: quick overrides applied, then the user's (e.g. --backend)."""
        spec = self
        if quick and self.quick:
            spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **self.quick))
        train_over = {k: v for k, v in overrides.items() if k in TrainConfig.__dataclass_fields__}
        top_over = {k: v for k, v in overrides.items() if k not in train_over}
        if train_over:
            spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **train_over))
        return dataclasses.replace(spec, **top_over) if top_over else spec

    def floor_for(self, quick: bool) -> float:
        return self.floor.quick if quick else self.floor.f1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Hash of everything that changes the result: not the name, floors or where it was read from."""
        d = self.to_dict()
        for k in ("name", "floor", "suite", "quick"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]

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
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
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
    defaults = doc.get("defaults", {})
    specs, seen = [], set()
    for i, entry in enumerate(doc.get("model", [])):
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


def parse_override(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE`` for a TrainConfig field; VALUE is read as a TOML value (1e-4, true, 64, "x")."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    hints = get_type_hints(TrainConfig)
    if not sep or key not in hints:
        raise SpecError(f"--set {text!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(hints))}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, _coerce(value, hints[key], f"--set {key}")
