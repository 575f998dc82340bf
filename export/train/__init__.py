"""Fine-tuning on an image folder (``edge-train``): the run, the data, the checkpoint and the report.

    train.py        the training loop and the run's files (its parser is beside the others, in export.cli)
    data.py         class folders, the validation split, the train and eval transforms
    checkpoint.py   the self-describing checkpoint edge-export reads
    init_model.py   --init: the deployed model's checkpoint, its head rows matched by label, what changed
    report.py       metrics JSON, loss/accuracy curves, the labelled validation grid
    files.py        the run's files beside --out: pid-named temporaries, never replacing a file not ours
    distributed.py  several processes under torchrun: rank, world size, the sums across ranks

Importing this package imports nothing heavy; ``export.train.train`` needs torch.
"""
