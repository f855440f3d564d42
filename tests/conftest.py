import importlib.util
import os

import pytest

from .helpers import tiny_qwen2

pytest_plugins = ["pytester"]


def interpret_triton_on_a_cpu_build() -> None:
    """Where torch is a CPU build and triton is installed (CI installs it), nerbench's Triton kernels are tested
    through Triton's interpreter (tests/test_triton_kernels.py). Triton reads the switch when it is first imported
    (transformers imports it), so it is set here, before any test module is."""
    import torch  # (imports no triton, starts no CUDA)

    if torch.version.cuda is None and torch.version.hip is None and importlib.util.find_spec("triton"):
        os.environ.setdefault("TRITON_INTERPRET", "1")


interpret_triton_on_a_cpu_build()


@pytest.fixture(scope="session", autouse=True)
def model_modules_imported_once():
    """pytester puts sys.modules back as it was after each test that uses it: a model module first imported inside
    such a test would be imported again by the next one, and torch refuses to register its operator libraries twice.
    Imported once before any test (in a fixture, not at import: the plugin must give this process its GPU before
    anything starts CUDA)."""
    import transformers.models.bert.modeling_bert  # noqa: F401
    import transformers.models.qwen2.modeling_qwen2  # noqa: F401


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A tiny Qwen2 token classifier (3 layers) with a byte-level BPE tokenizer, saved in a folder."""
    return tiny_qwen2(tmp_path_factory.mktemp("qwen2"), layers=3)


@pytest.fixture(autouse=True)
def transformers_rope_restored():
    """A test that applies a case's levers on a GPU swaps the rotary embedding in the model's modeling module for the
    whole process (accel/rope.py; the runner undoes it when a case ends, a test does not): each test starts from
    transformers' own function."""
    yield
    from nerbench_core.accel import plan

    plan.restore()
