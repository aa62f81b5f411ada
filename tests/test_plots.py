"""r3m.learn.plots: accuracy_vs_writes stays readable when sweeps sit on one point (a closed write
gate writes nothing at any threshold) or on each other."""

from __future__ import annotations

from r3m.learn.plots import accuracy_vs_writes_figure, plot_accuracy_vs_writes


def _sweep(points):
    return [{"threshold": t, "writes_per_sample": w, "accuracy": a} for t, w, a in points]


def test_coinciding_points_share_a_label_and_the_axis_spans_a_write(tmp_path):
    closed = _sweep((t, 0.0, 0.0) for t in (0.5, 0.9, 0.99, 0.999))
    ax = accuracy_vs_writes_figure({"memory before": closed, "memory after": closed}).axes[0]
    low, high = ax.get_xlim()
    assert low <= 0.0 and high >= 1.0  # not -0.04..0.04 around a single x
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"memory {k} (every threshold: 0.00 writes, 0.0%)" for k in ("before", "after")]
    assert not ax.texts  # no threshold labels printed over one another
    plot_accuracy_vs_writes({"memory": closed}, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0


def test_a_curve_labels_each_point_once_and_curves_label_at_their_own_height():
    sweep = _sweep([(0.5, 6.0, 0.8), (0.7, 6.0, 0.8), (0.99, 1.5, 0.5), (1.0, 0.0, 0.2)])
    ax = accuracy_vs_writes_figure({"before": sweep, "after": sweep}).axes[0]
    labels = [(t.get_text(), t.xy, t.xyann) for t in ax.texts]
    assert sorted(text for text, _, _ in labels) == sorted(["t=0.5, 0.7", "t=0.99", "t=1"] * 2)
    placed = [(xy, xyann) for _, xy, xyann in labels]
    assert len(set(placed)) == len(placed)  # the same point's labels of two curves do not overprint
    assert ax.get_xlim()[1] > 6.0
