"""The faces of docsort that a person uses: the Streamlit app (:mod:`docsort.faces.app`, run by
``docsort ui`` with ``streamlit run``; not imported as a library module)."""

from pathlib import Path

#: The Streamlit script ``docsort ui`` runs; shipped in the wheel.
APP_SCRIPT = Path(__file__).resolve().parent / "app.py"
