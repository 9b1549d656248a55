"""HF transformers <-> this GPT (TP = 1 state dicts), one module per family; see registry.py."""
