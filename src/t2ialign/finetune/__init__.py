"""Stage 5: reward-weighted fine-tuning of the UNet with the pre-training loss (paper Eq. 4, Sec. 3.3)."""

# The paper's Table 2 ablation: what each column changes from the defaults (configs/table2/*.toml hold the
# same settings for the command line; a test keeps them equal).
TABLE2 = {
    "human_only": {"use_unlabeled": False, "beta": 0.0},
    "human_unlabeled": {"use_unlabeled": True, "beta": 0.0},
    "full": {"use_unlabeled": True, "beta": 1.0},
}
