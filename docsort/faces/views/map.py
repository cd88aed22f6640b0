"""The app's "Map" page: ``st.navigation`` runs this script (docsort.faces.app.PAGES)."""

from docsort.faces.app import current_run, view_map

run = current_run()
view_map(run.col, run.table)
