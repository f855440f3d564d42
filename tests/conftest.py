import pytest

from .helpers import tiny_qwen2

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A tiny Qwen2 token classifier (3 layers) with a byte-level BPE tokenizer, saved in a folder."""
    return tiny_qwen2(tmp_path_factory.mktemp("qwen2"), layers=3)
