import pytest

# pytester puts sys.modules back as it was after each test that uses it: a model module first imported inside such a
# test would be imported again by the next one, and torch refuses to register its operator libraries twice. Imported
# here, once, before any test.
import transformers.models.bert.modeling_bert  # noqa: F401,E402
import transformers.models.qwen2.modeling_qwen2  # noqa: F401,E402

from .helpers import tiny_qwen2

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A tiny Qwen2 token classifier (3 layers) with a byte-level BPE tokenizer, saved in a folder."""
    return tiny_qwen2(tmp_path_factory.mktemp("qwen2"), layers=3)
