"""unochat: train tiny character-level chat models and run them bit-exactly on an Arduino UNO."""

__version__ = "0.1.0"
