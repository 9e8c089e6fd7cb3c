"""overlay_cli."""
