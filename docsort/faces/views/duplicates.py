"""The app's "Near-duplicates" page: ``st.navigation`` runs this script (docsort.faces.app.PAGES)."""

from docsort.faces.app import current_run, view_duplicates

run = current_run()
view_duplicates(run.col, run.counts)
