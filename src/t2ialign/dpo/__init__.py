"""Diffusion-DPO (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization"),
beyond the paper: the UNet trained on preference pairs against a frozen reference, on the shared training
core of the finetune stage (accelerate, atomic checkpoints, exact resume, a stock-loadable pipeline)."""
