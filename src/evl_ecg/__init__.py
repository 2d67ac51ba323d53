"""evl-ecg: distil a large ECG vision-language model into a small one (EVL-ECG, arXiv 2605.29977).

Data flows one way, one sub-package per stage::

    ecg/ (signal -> image) -> data/ (records, paired batches) -> models/ (typed outputs)
        -> distill/ (registered losses, objective) -> train/ (Trainer) -> eval/ (scores, reports)
"""

__version__ = "0.1.0"
