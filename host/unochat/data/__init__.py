"""data: the corpus side, before any model exists.

dataset (query|response files, the device's line editor, the held-out split) -> features (hashed query
trigrams and context n-grams, the spec of the C) -> augment (query variants for training). May import:
nothing of unochat but the foundation modules (paths, boards).
"""
