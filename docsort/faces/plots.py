"""Plots of the app: the cluster map (Plotly)."""

from __future__ import annotations

from pathlib import Path

from docsort.queries.browse import cluster_label


def map_figure(table, *, webgl_above: int = 1000, height_px: int = 600):
    """The cluster map: the stored 2-D UMAP coordinates as a Plotly scatter, one trace per cluster.

    Clusters are ordered by size (largest first) with noise last in light grey; hovering shows the
    file name, page and cluster; each point's ``customdata`` is its page id (see
    :func:`docsort.queries.browse.selection_page_ids`). Axes are hidden: UMAP coordinates have no units. Above
    ``webgl_above`` points the traces are WebGL (``scattergl``) so 100k points stay responsive;
    below it SVG, which needs no GPU in the browser. Built with ``plotly.graph_objects`` traces from
    NumPy arrays (not ``plotly.express``, whose per-group pandas work took 4-5 s at 100,000 points:
    benchmarks/RESULTS.md, "Acting on a selection").

    Args:
        table: rows of ``Collection.page_table()`` with a cluster (NaN coordinates are dropped).
        webgl_above: number of points above which WebGL is used.
        height_px: figure height, pixels.

    Returns:
        A ``plotly.graph_objects.Figure`` (needs the ``plotly`` package).
    """
    import numpy as np
    import plotly.graph_objects as go

    df = table[table["cluster"].notna() & table["umap_x"].notna()]
    clusters = df["cluster"].to_numpy(np.int64)
    names = dict(zip(clusters.tolist(), df["cluster_name"].tolist()))
    real, sizes = np.unique(clusters[clusters >= 0], return_counts=True)
    order = [int(c) for c in real[np.argsort(-sizes, kind="stable")]] + ([-1] if (clusters < 0).any() else [])
    webgl = len(df) > webgl_above
    trace = go.Scattergl if webgl else go.Scatter
    # One label per point, "file · p.N" (an object array: JSON strings), and the page id alone as
    # customdata: a 1-D number array, which Plotly sends as a typed array and returns in selection
    # events; a 2-D one goes out without its shape (plotly.py 6) and the event loses the page id.
    labels = np.array([f"{Path(p).name} · p.{n}" for p, n in zip(df["path"], df["page"])], dtype=object)
    page_ids = df["page_id"].to_numpy(np.int64)
    x, y = df["umap_x"].to_numpy(np.float64), df["umap_y"].to_numpy(np.float64)
    size = 9 if len(df) <= 2000 else 4
    fig = go.Figure()
    for c in order:
        at = clusters == c
        group = cluster_label(c, names.get(c))
        marker = {"size": size} if c >= 0 else {"size": size, "color": "#b0b0b0"}
        fig.add_trace(trace(
            x=x[at], y=y[at], mode="markers", name=group, legendgroup=group, marker=marker, customdata=page_ids[at],
            hovertext=labels[at], hovertemplate=f"<b>%{{hovertext}}</b><br>cluster={group}<extra></extra>",
        ))
    fig.update_layout(height=height_px, xaxis={"visible": False}, yaxis={"visible": False}, legend_title_text="cluster",
                      margin={"l": 0, "r": 0, "t": 10, "b": 0}, showlegend=True)
    return fig
