"""Tools that measure the service from outside: they import `digest`, never the reverse."""
