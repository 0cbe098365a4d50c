"""The HTML report of a run (``html``): the paper's tables and figures, read from the run directory."""
