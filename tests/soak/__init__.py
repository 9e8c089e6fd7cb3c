"""The soak run (``make soak MINUTES=5 [SEED=N]``): a cluster of daemons under crashes while it works, with invariants
checked from durable records at the end. Run as ``python -m tests.soak``; it holds no pytest tests, so ``make test``
does not collect it (docs/design.md, "The soak")."""
