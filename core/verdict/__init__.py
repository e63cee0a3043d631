"""Judging and teaching a loaded model: the one verdict pipeline (``inspection``), a person's answers
(``feedback``: Mark as OK, Mark as defect, undo) and the heatmap overlay shown beside a verdict."""
