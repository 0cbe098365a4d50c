"""Stage 2: many images per prompt from a diffusion pipeline into the run store (``images``)."""
