"""The HTTP and WebSocket surface: thin routers (``http``, ``stream``) sharing one dependency module
(``deps``: services, auth, rate limit) and one response mapping (``responses``). Routers do not import
each other."""
