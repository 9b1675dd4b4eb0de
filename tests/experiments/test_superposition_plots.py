"""The superposition plots are readable: no tick or polytope label overlaps another, the WᵀW
panels have a colour bar, and the feature label keeps clear of the tick labels."""

import dataclasses

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import superposition as S  # noqa: E402


class _Ctx:
    def __init__(self):
        self.figures = {}

    def save_figure(self, fig, name):
        fig.canvas.draw()
        self.figures[name] = fig


def _overlaps(texts, pad: float = 3.0) -> list[tuple[str, str]]:
    """Pairs of labels closer than `pad` pixels (touching labels read as one: "3×10⁰4×10⁰")."""
    boxes = [
        (t.get_text(), t.get_window_extent().expanded(1, 1).padded(pad / 2))
        for t in texts
        if t.get_text().strip()
    ]
    return [
        (a, b)
        for i, (a, box_a) in enumerate(boxes)
        for b, box_b in boxes[i + 1 :]
        if box_a.overlaps(box_b)
    ]


def _visible_ticklabels(axis):
    lo, hi = sorted(axis.get_view_interval())
    labels = []
    for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
        if tick.label1.get_visible() and lo <= tick.get_loc() <= hi:
            labels.append(tick.label1)
    return labels


@pytest.mark.parametrize("levels", [2, 20])
def test_geometry_labels_do_not_overlap(levels):
    rng = np.random.default_rng(0)
    density = 20.0 ** (-np.arange(levels) / max(levels - 1, 1) * (1 if levels > 2 else 0.5))
    geo = {
        "density": density,
        "dstar": rng.uniform(0.3, 1, (2, levels)),
        "dims": rng.uniform(0, 1, (2, levels, 50)),
        "norms": rng.uniform(0, 1, (2, levels, 50)),
        "learned": rng.uniform(0, 1, 300),
        "is_peak": [False] * len(S.sp.POLYTOPE_FRACTIONS),
    }
    ctx = _Ctx()
    S.plot_geometry(None, geo, ctx)
    fig = ctx.figures["geometry.png"]
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            assert not _overlaps(_visible_ticklabels(axis)), (ax.get_title(), axis)
    names = set(S.sp.POLYTOPE_FRACTIONS)
    labels = [t for t in fig.axes[1].texts if t.get_text() in names]
    assert len(labels) == len(names)
    assert not _overlaps(labels)


def test_sweep_has_colour_bars_and_a_clear_feature_label():
    @dataclasses.dataclass
    class Cfg:
        sweep_densities: tuple = (1.0, 0.1, 0.01)

    rng = np.random.default_rng(0)
    d = len(Cfg.sweep_densities)
    run = {
        "W": rng.normal(size=(1, d, 20, 5)) / 3,
        "norms": rng.uniform(0, 1.1, (1, d, 20)),
        "interference": rng.uniform(0, 1, (1, d, 20)),
    }
    ctx = _Ctx()
    S.plot_sweep(Cfg(), {"relu": run}, ctx)
    fig = ctx.figures["sweep_relu.png"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2
    assert "WᵀW" in bars[0].get_ylabel()
    panel = fig.axes[d]  # the first bar panel, whose y-label names the features
    label = panel.yaxis.label.get_window_extent()
    for tick in _visible_ticklabels(panel.xaxis):
        assert not label.overlaps(tick.get_window_extent()), tick.get_text()
