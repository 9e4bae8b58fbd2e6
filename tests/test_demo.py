"""The demo's results table reads every metric validation logs, per-task or not."""

from __future__ import annotations

from f2lightning.demo import results_table


def test_results_table_keeps_task_metrics_and_leaves_out_run_wide_counts():
    before = {"val/OD/box_recall@0.5": 0.0, "val/loss": 7.0, "val/skipped_images": 0.0}
    after = {"val/OD/box_recall@0.5": 0.25, "val/loss": 1.5, "val/skipped_images": 2.0}
    rows = results_table(before, after).splitlines()
    assert "| OD | box_recall@0.5 | 0.000 | 0.250 |" in rows
    assert rows[-1] == "| all | loss | 7.000 | 1.500 |"
    assert not [row for row in rows if "skipped" in row]
