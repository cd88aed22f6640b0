"""The app's "Clusters" page: ``st.navigation`` runs this script (docsort.faces.app.PAGES)."""

from docsort.faces.app import current_run, view_clusters

run = current_run()
view_clusters(run.col, run.root, run.version, run.table, run.counts)
