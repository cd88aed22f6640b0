"""docsort's Streamlit app, from a source checkout: ``streamlit run app.py``.

The app itself is :mod:`docsort.faces.app` (``docsort/faces/app.py``), inside the package so that a
wheel install has it too; ``docsort ui`` runs that file. This file only runs it, so that the app is
where people look for it in the repository.
"""

import runpy

runpy.run_module("docsort.faces.app", run_name="__main__")
