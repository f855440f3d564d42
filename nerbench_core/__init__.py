"""nerbench: fine-tune and compare named-entity recognizers (encoders and decoder LLMs) on CoNLL-style data."""
import logging

__version__ = "0.2.0"

# bitsandbytes 0.50, on CPUs with AVX512-BF16, tries to fetch a hub kernel for its 4-bit inference matmul when it is
# imported, and warns on every start where the `kernels` package is missing. nerbench never runs that path (it keeps
# bitsandbytes from repacking 4-bit weights for it: backends.hf.keep_cpu_weights_trainable), so the warning is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
