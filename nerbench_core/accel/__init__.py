"""The speed levers, apart from the training path: :func:`.plan.plan` decides them for a case in one place.

``memory`` estimates a step's activations (gradient checkpointing "auto", weights kept dequantized); ``liger``,
``compiling``, ``lora_kernels`` and ``cuda_graphs`` are the levers themselves.
"""
