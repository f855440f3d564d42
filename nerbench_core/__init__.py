"""nerbench: fine-tune and compare named-entity recognizers (encoders and decoder LLMs) on CoNLL-style data."""
__version__ = "0.1.0"
