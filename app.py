"""docsort's Streamlit app, from a source checkout: ``streamlit run app.py``.

The app itself is :mod:`docsort.faces.app` (``docsort/faces/app.py``), inside the package so that a
wheel install has it too; ``docsort ui`` runs that file. This file only runs its ``main`` (imported,
so that the page scripts in docsort/faces/views/ and this script share one copy of the module), so
that the app is where people look for it in the repository.
"""

from docsort.faces.app import main

main()
