"""Multi-scale factor-out: the change of variables against the dense Jacobian (float64), the
round trip, and bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from respax.generative import (
    AffineCoupling,
    FactorOut,
    Flow,
    LUConv1x1,
    Squeeze,
    StandardNormal,
)


@pytest.mark.float64
def test_multiscale_image_flow_log_det_and_round_trip():
    k = jax.random.split(jax.random.key(0), 3)
    kw = dict(width=8, zero_init=False, scale_fn="exp")
    blocks = [
        Squeeze((4, 4, 2)),  # -> (2, 2, 8)
        AffineCoupling((2, 2, 8), key=k[0], **kw),
        FactorOut(4, [AffineCoupling((2, 2, 4), key=k[1], **kw), LUConv1x1((2, 2, 4), key=k[2])]),
    ]
    flow = Flow(StandardNormal((2, 2, 8)), blocks)
    x = jax.random.normal(jax.random.key(1), (4, 4, 2), jnp.float64)

    @jax.jit
    def check(x):
        z, ld = flow.forward_and_log_det(x)
        jac = jax.jacfwd(flow.forward)(x).reshape(32, 32)
        return z, ld, jnp.linalg.slogdet(jac)[1], flow.inverse(z)

    z, ld, dense, back = check(x)
    np.testing.assert_allclose(ld, dense, atol=1e-10)
    np.testing.assert_allclose(back, x, atol=1e-10)
    # the factored-out channels are the squeezed input's first four, untouched by the second level
    y1 = blocks[1].forward_and_log_det(blocks[0].forward_and_log_det(x)[0])[0]
    np.testing.assert_array_equal(z[..., :4], y1[..., :4])


def test_factor_out_bad_inputs():
    with pytest.raises(ValueError, match="keep their event shape"):
        FactorOut(2, [Squeeze((2, 2, 2))])
    with pytest.raises(ValueError, match="factored"):
        FactorOut(0, [AffineCoupling((2,), key=jax.random.key(0))])
    b = FactorOut(2, [AffineCoupling((2,), key=jax.random.key(0))])
    with pytest.raises(ValueError, match="`x`"):
        b.forward_and_log_det(jnp.zeros(3))
