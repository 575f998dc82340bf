"""Collecting the frames a model gets wrong, and reviewing them into an ImageFolder for edge-train.

    sampler.py     the --collect sink: samplers, caps, near-duplicates, disk budget, writes off the loop
    folder.py      DIR's layout and the reviewer's decisions (confirm, relabel, discard), paths confined to DIR
    reviewpage.py  the live view's /review page and its JSON API (review.html)
    cli.py         edge-collect: the same decisions from the command line
"""
