"""The app's page scripts, one per view: ``st.navigation`` in :func:`docsort.faces.app.main` runs
them (:data:`docsort.faces.app.PAGES` lists them); each calls one ``view_*`` function of
:mod:`docsort.faces.app`. They are scripts, not library modules: importing one outside a script run
of the app raises ``LookupError``."""
