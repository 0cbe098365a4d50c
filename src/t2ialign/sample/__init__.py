"""Stage 6: rejection sampling with the learned reward (``rejection``)."""
