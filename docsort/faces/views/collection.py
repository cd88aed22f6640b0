"""The app's "Collection & export" page: ``st.navigation`` runs this script (docsort.faces.app.PAGES)."""

from docsort.faces.app import current_run, view_status

run = current_run()
view_status(run.col, run.root, run.version, run.counts, run.about)
