"""The HTTP face: Quart app, ASGI stream front, replies, CORS, auth, readiness, OpenAPI, page."""
