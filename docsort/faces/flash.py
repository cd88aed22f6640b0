"""One-shot messages of the app: an action stores ``(kind, text, *extra)`` under a slot of
``st.session_state`` and reruns the script; the next run shows it once (``kind`` names a Streamlit
call: ``"success"``, ``"warning"``, ``"error"``, ``"info"``)."""

from __future__ import annotations

from typing import Any

import streamlit as st

__all__ = ["flash", "show_flash"]


def flash(slot: str, kind: str, text: str, *extra: Any) -> None:
    """Keep a message for the next script run under ``st.session_state[slot]``."""
    st.session_state[slot] = (kind, text, *extra)


def show_flash(slot: str) -> tuple | None:
    """Show the message kept under ``slot`` (``st.<kind>(text)``) and forget it; returns the whole
    stored tuple (its extra items are the caller's to show), or ``None`` when there was none."""
    msg = st.session_state.pop(slot, None)
    if msg:
        getattr(st, msg[0])(msg[1])
    return msg
