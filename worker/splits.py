"""The deterministic holdout split, apart from the estimators so that preparing data does not pay for
importing scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd

# A fixed key, so a row lands in the same split in every run, for every model version.
_HOLDOUT_HASH_KEY = "arrival-holdout"


def holdout_mask(frame: pd.DataFrame, fraction: float, key: str = _HOLDOUT_HASH_KEY) -> np.ndarray:
    """True for holdout rows, chosen by a hash of each row's content: the same row is in the same
    split in every training, so a challenger and the champion are judged on the same rows.

    A small dataset may hash all to one side. Then the row nearest the line crosses it, so there is
    always a row to fit on and, from two rows on, one to judge with: a user whose file the contract
    accepted expects a model judged on something, not a failed job. Which row crosses depends on the
    whole small dataset, so it may change sides as data arrives; with so few rows, being judged at
    all matters more. A single row is fit on, and its empty holdout gets the version rejected with
    a reason (worker/train_model.py's `_judge`). Another `key` splits another way (the tuning split
    inside the training rows, worker/tuning.py)."""
    hashes = pd.util.hash_pandas_object(frame, index=False, hash_key=key.ljust(16)[:16])
    values = hashes.to_numpy()
    buckets = values % 10_000
    mask: np.ndarray = buckets < int(fraction * 10_000)
    holdout_first = np.lexsort((values, buckets))  # by content alone, whatever the rows' order
    if len(mask) >= 1 and mask.all():
        mask[holdout_first[-1]] = False
    if len(mask) >= 2 and not mask.any():
        mask[holdout_first[0]] = True
    return mask
