"""What every layer shares: atomic files, checkpoints, and the training core (step loop, EMA, schedules,
the non-finite guard and exact resume). Imports nothing else of t2ialign."""
