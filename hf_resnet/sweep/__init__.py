"""`hf-resnet sweep`: hyperparameter search over any `hf-resnet train` field with Optuna.

command.py (the command line) -> runner.py (the loop) -> trial.py (one run, its pruning callback); space.py
reads the search space, study.py the Optuna study, outputs.py writes trials.csv, best/ and the plots. Only
runner.py and what it imports need Optuna, so `hf-resnet sweep --help` answers without it.
"""
