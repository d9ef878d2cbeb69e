"""Regenerates digits.npz and digits.csv from scikit-learn's bundled copy of the UCI digits.

The data ships with scikit-learn (sklearn/datasets/data/digits.csv.gz): 1,797 8x8 grey-level
images of handwritten digits, values 0-16, from the UCI ML hand-written digits data set
(E. Alpaydin, C. Kaynak, 1998). No download is needed, which is why the examples use it.
Features are scaled to [0, 1] so the examples train without a normalisation layer.
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

here = Path(__file__).parent
digits = load_digits()
x = (digits.data / 16.0).astype("float32")
y = digits.target.astype("int64")
rng = np.random.default_rng(0)
order = rng.permutation(len(x))
x, y = x[order], y[order]
split = int(len(x) * 0.85)
np.savez_compressed(here / "digits.npz", x=x[:split], y=y[:split])
np.savez_compressed(here / "digits-test.npz", x=x[split:], y=y[split:])
# The same digits as 8x8x1 images, for the CNN example.
np.savez_compressed(here / "digits-images.npz", x=x.reshape(-1, 8, 8, 1), y=y)
header = ",".join([f"p{i}" for i in range(64)] + ["digit"])
rows = np.concatenate([digits.data[order][:split], y[:split, None]], axis=1).astype(int)
np.savetxt(here / "digits.csv", rows, fmt="%d", delimiter=",", header=header, comments="")
