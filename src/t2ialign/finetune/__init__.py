"""Stage 5: reward-weighted fine-tuning of the UNet with the pre-training loss (paper Eq. 4, Sec. 3.3)."""
