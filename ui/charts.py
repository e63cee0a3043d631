"""Plotly figures for the pages (no computation beyond arranging already-computed numbers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.scores.metrics import Curve

PALETTE = ["#2e7d32", "#c62828", "#ef6c00", "#6a1b9a", "#1565c0", "#00838f", "#ad1457", "#4e342e"]
# Legend below the x-axis title (not on it): anchored by its top edge, with the bottom margin to hold both.
LAYOUT = dict(margin=dict(l=40, r=10, t=40, b=100), height=360, template="plotly_white",
              legend=dict(orientation="h", yanchor="top", y=-0.3, x=0))


def _thin(x: np.ndarray, y: np.ndarray, limit: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= limit:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, limit).astype(int))
    return x[idx], y[idx]


def roc_figure(curve: Curve, point: tuple[float, float], title: str, auroc: float) -> go.Figure:
    x, y = _thin(curve.fpr, curve.tpr)
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines", name=f"ROC (AUROC {auroc:.3f})", line=dict(color="#1565c0")))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#9e9e9e"),
                             showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[point[0]], y=[point[1]], mode="markers", name="current threshold",
                             marker=dict(size=12, color="#c62828", symbol="x")))
    fig.update_layout(title=title, xaxis_title="false positive rate", yaxis_title="true positive rate", **LAYOUT)
    return fig


def pr_figure(curve: Curve, point: tuple[float, float], title: str) -> go.Figure:
    x, y = _thin(curve.recall, curve.precision)
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines", name="precision-recall", line=dict(color="#6a1b9a")))
    fig.add_trace(go.Scatter(x=[point[0]], y=[point[1]], mode="markers", name="current threshold",
                             marker=dict(size=12, color="#c62828", symbol="x")))
    fig.update_layout(title=title, xaxis_title="recall", yaxis_title="precision", yaxis_range=[0, 1.02], **LAYOUT)
    return fig


def score_histogram(frame: pd.DataFrame, threshold: float, review: tuple[float, float] | None = None) -> go.Figure:
    """Histograms of raw image scores per defect type (good first) with the threshold line and the review band
    shaded (``review``: ``(low, high)``, None: no band)."""
    fig = go.Figure()
    groups = ["good"] + sorted(g for g in frame["defect"].unique() if g != "good")
    for i, group in enumerate(groups):
        values = frame.loc[frame["defect"] == group, "score"]
        if len(values):
            fig.add_trace(go.Histogram(x=values, name=f"{group} ({len(values)})", opacity=0.6, nbinsx=40,
                                       marker_color=PALETTE[i % len(PALETTE)]))
    fig.add_vline(x=threshold, line=dict(color="#000", dash="dash"), annotation_text="threshold")
    if review is not None:
        fig.add_vrect(x0=review[0], x1=review[1], fillcolor="#ef6c00", opacity=0.12, line_width=0,
                      annotation_text="REVIEW band", annotation_position="bottom left")
    fig.update_layout(barmode="overlay", title="Image scores: good vs each defect type", xaxis_title="raw score",
                      yaxis_title="images", **LAYOUT)
    return fig


def confusion_figure(counts: dict[str, int]) -> go.Figure:
    z = [[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]]
    fig = go.Figure(go.Heatmap(z=z, x=["predicted OK", "predicted DEFECT"], y=["truly good", "truly defective"],
                               text=[[str(v) for v in row] for row in z], texttemplate="%{text}",
                               colorscale="Blues", showscale=False))
    fig.update_layout(title="Confusion matrix", **{**LAYOUT, "height": 260, "margin": dict(l=40, r=10, t=40, b=40)})
    return fig


def compare_scatter(frame: pd.DataFrame, x_label: str, y_label: str) -> go.Figure:
    """One point per image: score of model A (x) against model B (y), coloured by defect type."""
    fig = go.Figure()
    groups = ["good"] + sorted(g for g in frame["defect"].unique() if g != "good")
    for i, group in enumerate(groups):
        part = frame[frame["defect"] == group]
        fig.add_trace(go.Scatter(x=part["score_a"], y=part["score_b"], mode="markers", name=group,
                                 text=part["name"], marker=dict(size=7, color=PALETTE[i % len(PALETTE)], opacity=0.75)))
    fig.update_layout(title="Scores per image", xaxis_title=x_label, yaxis_title=y_label, **{**LAYOUT, "height": 420})
    return fig


def counts_per_hour(frame: pd.DataFrame) -> go.Figure:
    """Stacked bars: images per hour and verdict (``frame``: hour, verdict, images)."""
    colors = {"OK": "#2e7d32", "REVIEW": "#ef6c00", "DEFECT": "#c62828", "NO VERDICT": "#9e9e9e", "REJECTED": "#6d4c41"}
    fig = go.Figure()
    for verdict, part in frame.groupby("verdict"):
        fig.add_trace(go.Bar(x=part["hour"], y=part["images"], name=str(verdict),
                             marker_color=colors.get(str(verdict), "#1565c0")))
    fig.update_layout(barmode="stack", title="Images per hour", xaxis_title="hour", yaxis_title="images", **LAYOUT)
    return fig
