"""Overlay topic managers and lookup services (BRC-22/24 plug-ins): the interfaces (``plugins``), how a node finds
them by name (``registry``), and the built-ins: SHIP/SLAP (``ship``, BRC-88) and UHRP (``uhrp``, BRC-26). Pure:
the overlay engine (``services/overlay_engine.py``) runs them and keeps what they index in the store.
"""
