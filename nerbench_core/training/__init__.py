"""Training one case: :func:`.recipe.train` (the recipe, top to bottom), the Trainer subclass (``trainer``), its
batches (``batching``) and callbacks (``callbacks``)."""
