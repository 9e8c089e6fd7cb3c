"""Plug-ins the tests host: a small user topic and lookup service, as a third party would ship them."""
