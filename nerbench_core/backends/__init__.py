"""Backends: from a spec to a trainable model and its tokenizer, and back from a saved case.

``base`` holds the interface every backend implements and :func:`~.base.build`; ``registry`` their names (no torch,
so that specs and the plugin can name them before any model code loads); ``hf`` and ``unsloth`` are the two there
are; ``locations`` finds weights, ``attention`` sets a decoder's attention mode, ``synthetic`` builds random weights
in a published architecture.
"""
