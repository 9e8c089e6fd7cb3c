"""The only code that touches sockets: authenticated websocket peer links (``link``) and the peer manager."""
