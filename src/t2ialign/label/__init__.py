"""Stage 3: binary human feedback (good / bad / skip) from several labelers, people or simulated."""
