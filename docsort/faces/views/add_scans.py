"""The app's "Add scans" page: ``st.navigation`` runs this script (docsort.faces.app.PAGES)."""

from docsort.faces.app import current_run, view_add

run = current_run()
view_add(run.col, run.counts, run.col.last_cluster_run())
