"""The app's "Document types" page: ``st.navigation`` runs this script (docsort.faces.app.PAGES)."""

from docsort.faces.app import current_run, view_types

run = current_run()
view_types(run.col, run.root, run.version, run.counts)
