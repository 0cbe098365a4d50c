"""Beyond the paper (issue 17): the iterated loop, ``t2ialign loop RUN --rounds K``.

Each round generates from the current model on fresh feedback prompts, collects labels (simulated
labelers, or people through the web app), trains the reward again on every label of the loop so far,
fine-tunes the current model and evaluates it paired with base. ``state`` keeps each round's progress so
that a rerun continues at the next unfinished stage; ``labels`` counts and waits for labels; ``run`` is
the loop itself. docs/loop.md.
"""
