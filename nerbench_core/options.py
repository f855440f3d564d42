"""What a run was asked to do, read once at the edge (the pytest plugin, a command line) and carried from there:
no module below reads the environment for it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RunOptions:
    cache_dir: Path
    quick: bool = False
    synthetic: bool = False
    gpu_peak_tflops: float | None = None
    gpu_memory_gb: float | None = None  # --gpu-memory: behave as a card of this size
    gpu_shared_by: int = 1  # pytest-xdist workers on this process's GPU: each plans with its share of the memory
    tokenizers_dir: Path | None = None  # NERBENCH_TOKENIZERS: offline tokenizers for --synthetic (encoder/, decoder/)
    save_models: Path | None = None  # keep each fine-tuned case (adapter + head, or the whole model) here
    label: str = ""  # --label, carried by every record of the run
    profile_dir: Path | None = None  # a torch.profiler table of a few training steps per case goes here
    report_to: str = "none"  # --report-to: the Trainer's loggers (tensorboard, wandb, mlflow)
    progress: bool = True  # live progress lines while a case runs
    overrides: dict = field(default_factory=dict)  # from the command line: backend, epochs, ...

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def work_dir(self) -> Path:
        """Trainer checkpoints of cases in progress, one folder per run key."""
        return self.cache_dir / "trainer"
