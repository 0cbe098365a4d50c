"""Stage 4: the reward model r_phi(x, z) on CLIP embeddings (paper Sec. 3.2, Eq. 1-3)."""
