"""The deterministic holdout split, apart from the estimators so that preparing data does not pay for
importing scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd

# A fixed key, so a row lands in the same split in every run, for every model version.
_HOLDOUT_HASH_KEY = "arrival-holdout"


def holdout_mask(frame: pd.DataFrame, fraction: float) -> np.ndarray:
    """True for holdout rows, chosen by a hash of each row's content: the same row is in the same
    split in every training, so a challenger and the champion are judged on the same rows."""
    hashes = pd.util.hash_pandas_object(frame, index=False, hash_key=_HOLDOUT_HASH_KEY.ljust(16)[:16])
    return (hashes.to_numpy() % 10_000) < int(fraction * 10_000)
