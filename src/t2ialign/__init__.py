"""t2ialign: align text-to-image diffusion models with human feedback (Lee et al. 2023)."""

__version__ = "0.1.0"
