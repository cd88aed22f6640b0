"""The app's "Search text" page: ``st.navigation`` runs this script (docsort.faces.app.PAGES)."""

from docsort.faces.app import current_run, view_text_search

run = current_run()
view_text_search(run.col, run.counts, run.n_text)
