"""Plots of the app: the cluster map (Plotly)."""

from __future__ import annotations

from pathlib import Path

from docsort.queries.browse import cluster_label


def map_figure(table, *, webgl_above: int = 1000, height_px: int = 600):
    """The cluster map: the stored 2-D UMAP coordinates as a Plotly scatter, one trace per cluster.

    Clusters are ordered by size (largest first) with noise last in light grey; hovering shows the
    file name, page and cluster; each point's ``customdata`` is ``[page_id]`` (see
    :func:`selection_page_ids`). Axes are hidden: UMAP coordinates have no units. Above
    ``webgl_above`` points the traces are WebGL (``scattergl``) so 100k points stay responsive;
    below it SVG, which needs no GPU in the browser.

    Args:
        table: rows of ``Collection.page_table()`` with a cluster (NaN coordinates are dropped).
        webgl_above: number of points above which WebGL is used.
        height_px: figure height, pixels.

    Returns:
        A ``plotly.graph_objects.Figure`` (needs the ``plotly`` package).
    """
    import plotly.express as px

    df = table[table["cluster"].notna() & table["umap_x"].notna()].copy()
    df["file"] = [Path(p).name for p in df["path"]]
    df["group"] = [cluster_label(c, n) for c, n in zip(df["cluster"], df["cluster_name"])]
    sizes = df.loc[df["cluster"] >= 0, "group"].value_counts()
    order = list(sizes.index) + (["noise"] if (df["cluster"] < 0).any() else [])
    fig = px.scatter(
        df, x="umap_x", y="umap_y", color="group", custom_data=["page_id"], hover_name="file",
        hover_data={"page": True, "group": True, "umap_x": False, "umap_y": False},
        category_orders={"group": order}, color_discrete_map={"noise": "#b0b0b0"},
        render_mode="webgl" if len(df) > webgl_above else "svg", labels={"group": "cluster"},
    )
    fig.update_traces(marker={"size": 9 if len(df) <= 2000 else 4})
    fig.update_layout(height=height_px, xaxis={"visible": False}, yaxis={"visible": False}, legend_title_text="cluster",
                      margin={"l": 0, "r": 0, "t": 10, "b": 0})
    return fig
