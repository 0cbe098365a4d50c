"""Loading any checkpoint (a local Stable Diffusion / CLIP folder, or the shipped world), CLIP embeddings
and their on-disk cache, and tiny models built from config for tests."""
