"""model: the integer model, the spec every implementation follows.

formats (the weight-format registry) -> intmodel (IntModel, its files) -> reference (integer inference:
the spec) -> metrics (TF, EM), density (nonzero inputs per layer), z80ai (import), files (open a model
file). May import: data.
"""
