"""The training side of a run: the model and its head, what trains when (freezing, parameter groups, class
balance, losses, schedules, EMA), metrics, the callbacks, checkpoints, and the checks before step one.

    modeling.py    checkpoint or config -> model, head mapped onto the data's classes
    alignment.py   each dataset class's row of the checkpoint's head (position, class_map, synset, name)
    strategies.py  freezing plan, parameter groups, head dropout       balance.py  class counts, balanced sampler
    losses.py      cross-entropy on soft targets (mixup/cutmix)     optim.py    optimizer settings, step schedule
    ema.py         the weights' moving average                         metrics.py  computed locally, bounded memory
    callbacks.py   every callback a run registers                      checkpoints.py  resume, atomic saves
    distributed.py several processes: each example once an epoch      preflight.py  checks before step one
"""
