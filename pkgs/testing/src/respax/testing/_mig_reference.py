"""disentanglement_lib's discrete MIG as that library computes it (numpy + scikit-learn), the
one reference that `tests/generative/test_mig.py` and `benchmarks/mig_speed.py` both compare
`respax.generative.mig_discrete` against.

disentanglement_lib itself needs TensorFlow 1 and does not install on Python 3.11, so this is a
transcription of its `evaluation/metrics/mig.py` and `utils.py` (`_histogram_discretize`,
`discrete_mutual_info`, `discrete_entropy`). Private: scikit-learn is imported on call, it is
not a dependency of respax-testing.
"""

import numpy as np
from numpy.typing import NDArray


def reference_mig_discrete(
    codes: NDArray, factors: NDArray, num_bins: int = 20
) -> tuple[float, NDArray, NDArray]:
    """disentanglement_lib's discrete MIG of encoder means `codes` `(N, D)` against integer
    factor classes `factors` `(N, K)`.

    `np.histogram` bin edges per latent, `np.digitize` into them, a
    `sklearn.metrics.mutual_info_score` loop over latents x factors, the factors' empirical
    entropies, and the mean over factors of (top-1 - top-2 MI) / H(v_k).

    Returns:
        `(mig, mutual_info, discretized)`: the score, the `(D, K)` MI matrix (nats) and the
        `(N, D)` bin labels (1-based, as `np.digitize` gives them).

    Example:
        >>> import numpy as np
        >>> f = np.stack([np.arange(40) % 4, np.arange(40) // 4], 1)
        >>> round(reference_mig_discrete(f.astype(float), f)[0], 4)
        1.0
    """
    from sklearn.metrics import mutual_info_score

    codes, factors = np.asarray(codes, np.float64), np.asarray(factors)
    disc = np.zeros_like(codes, dtype=np.int64)
    for j in range(codes.shape[1]):
        disc[:, j] = np.digitize(codes[:, j], np.histogram(codes[:, j], num_bins)[1][:-1])
    m = np.zeros((codes.shape[1], factors.shape[1]))
    for i in range(codes.shape[1]):
        for j in range(factors.shape[1]):
            m[i, j] = mutual_info_score(factors[:, j], disc[:, i])
    h = np.asarray(
        [mutual_info_score(factors[:, j], factors[:, j]) for j in range(factors.shape[1])]
    )
    sorted_m = np.sort(m, axis=0)[::-1]
    return float(np.mean((sorted_m[0] - sorted_m[1]) / h)), m, disc
