"""Simulated environment for offline reproduction (algorithms.md §6): a synthetic facts world with a
known gold token-level preference (`world`), a noisy minimal-edit annotator (`annotator`), a synthetic
pretraining corpus (`corpus`) and a tiny word-level tokenizer and policy (`policy`, `build`)."""
