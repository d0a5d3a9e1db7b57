"""The rooms of the training loop in minigpt/train.py, one job each.

    config.py     the recipes (presets), TrainConfig, resuming a run's settings, the device
    steps.py      one optimisation step, in one process or over the ranks of a data-parallel run
    evaluate.py   the loss on random batches, over a whole split, and a sample of text
    metrics.py    the progress line, warnings, metrics.csv and loss.png

Read minigpt/train.py first: it is the loop, in nanoGPT's shape, and calls these.
"""
