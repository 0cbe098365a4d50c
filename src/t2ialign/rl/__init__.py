"""Online RL of the UNet (beyond the paper): DDPO with PPO clipping, an optional DPOK-style KL penalty
to the base model, and a guard against reward hacking (``t2ialign rl``)."""
