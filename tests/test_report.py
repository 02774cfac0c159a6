"""The report figure as a reader sees it: every printed figure whole and readable."""

import json

import pytest

from distil_rank.benchmark import report
from distil_rank.benchmark.results import RunSummary


def _fidelity_panel(root):
    """The reference run's fidelity panel, drawn at its size in the report's grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = RunSummary.from_json(
        json.loads((root / "reference" / "distil_rank_summary.json").read_text()))
    fig, axes = plt.subplots(3, 3, figsize=(19, 16))
    fig.subplots_adjust(**report.SUBPLOT_MARGINS)
    ax = axes[0, 1]
    report._panel_fidelity(ax, summary, summary.results())
    fig.canvas.draw()
    return fig, ax, fig.canvas.get_renderer()


def test_no_bar_label_of_the_fidelity_panel_is_hidden_by_its_legend(root):
    """Each bar's "EV x" label lies inside the axes, clear of the legend and of its own
    whisker: under the legend, the reference run's Spectral SVD read "EV -85" for -852."""
    import matplotlib.pyplot as plt

    fig, ax, renderer = _fidelity_panel(root)
    try:
        legend = ax.get_legend().get_window_extent(renderer)
        frame = ax.get_window_extent(renderer)
        labels = [text for text in ax.texts if text.get_text().startswith("EV ")]
        assert len(labels) == sum(len(c) for c in ax.containers if hasattr(c, "patches"))
        for label in labels:
            box = label.get_window_extent(renderer)
            assert not box.overlaps(legend), label.get_text()
            assert frame.y0 <= box.y0 and box.y1 <= frame.y1, label.get_text()
        whisker_tops = {}  # display y of each whisker's top, by its bar's centre
        for container in ax.containers:
            if hasattr(container, "patches") and container.errorbar is not None:
                for bar, segment in zip(container.patches,
                                        container.errorbar.lines[2][0].get_segments()):
                    whisker_tops[round(bar.get_x() + bar.get_width() / 2, 6)] = \
                        ax.transData.transform((0, max(segment[:, 1])))[1]
        for label in labels:
            x = round(label.xy[0], 6)
            assert label.get_window_extent(renderer).y0 >= whisker_tops[x] - 0.5, \
                label.get_text()
    finally:
        plt.close(fig)


def test_the_check_sees_a_hidden_label(root, monkeypatch):
    """The check above fails where the bars reach under the legend."""
    monkeypatch.setattr(report, "TALLEST_BAR", 0.95)
    with pytest.raises(AssertionError):
        test_no_bar_label_of_the_fidelity_panel_is_hidden_by_its_legend(root)


def test_the_real_model_figure_draws_each_variant_on_one_named_line(root, tmp_path):
    """bench/real_model.py's figure from its committed record: every variant is a point of
    exactly one line (its method through its budgets: the name less its budget), and the
    figure is written. Its per-point labels overlapped into an unreadable block before."""
    from conftest import load_script

    module = load_script("bench/real_model.py")
    path = next(p for p in sorted((root / "bench" / "results").glob("real_model_*.json"))
                if not p.stem.endswith("_quick"))
    record = json.loads(path.read_text())
    names = {id(row): name for name, row in record["variants"].items()}
    lines = module.variant_lines(record["variants"])
    drawn = [(method, budget, names[id(row)]) for method, points in lines.items()
             for budget, row in points]
    assert sorted(name for *_, name in drawn) == sorted(record["variants"])
    for method, budget, name in drawn:
        assert name.replace(f" {budget}", "", 1) == method if budget else name == method
    budgets = {len(points) for method, points in lines.items() if "dense" not in method}
    assert budgets == {len(module.BUDGETS)}
    module.figure(record, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_closed_form_stays_in_sight_under_its_students_curve(root):
    """distil_da keeps its closed-form start, so its curve lies on data_aware's: in the
    reference run's sweep panels the closed form is drawn as hollow squares larger than the
    student's dots, and so shows around them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = RunSummary.from_json(
        json.loads((root / "reference" / "distil_rank_summary.json").read_text()))
    view = summary.results()
    head = list(view.heads())[0]
    fig, (pareto, task) = plt.subplots(1, 2)
    try:
        report._panel_pareto(pareto, summary, view, summary.teachers[0], "black")
        report._panel_task(task, summary, view, head)
        for ax, student in ((pareto, "distil_da"), (task, "distil_da")):
            lines = {c.get_label(): c.lines[0] for c in ax.containers if c.lines[0]}
            closed = next(v for k, v in lines.items() if k.startswith("data_aware"))
            covering = next(v for k, v in lines.items() if k.startswith(student))
            assert max(abs(a - b) for a, b in zip(closed.get_ydata(), covering.get_ydata())) \
                < 0.05 * max(abs(v) for v in closed.get_ydata())  # the curves do coincide
            assert closed.get_markerfacecolor() == "none"
            assert closed.get_markersize() > covering.get_markersize()
    finally:
        plt.close(fig)
