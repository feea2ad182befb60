"""engine: the process state of one store, split by job (runtime.py wires the parts), the
operations (`Store`), group commit, and opening a store (setup.py)."""
