"""`phasecode compare`: conversion methods side by side, as a resumable grid (grid.py), a
results store (store.py), the paper-shaped Markdown tables (tables.py) and a plot (plot.py)."""
