"""The app's "Similar documents" page: ``st.navigation`` runs this script (docsort.faces.app.PAGES)."""

from docsort.faces.app import current_run, view_similar

run = current_run()
view_similar(run.col, run.root, run.version, run.table, run.n_text)
