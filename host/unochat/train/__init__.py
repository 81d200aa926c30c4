"""train: quantization-aware training with PyTorch, and the compression pipeline.

qat (QuantMLP, export to an IntModel) -> fit (the training loop) -> trainset (pairs, split, augmentation)
-> checkpoint (.pt + .npz, load_model for every model file) -> scratch (train from a dataset) -> prune
(structured pruning) -> finetune (prune or requantize a checkpoint, fine-tune) -> pipeline (the variants).
May import: data, model.
"""
