"""The HTTP side of the server: app factory, typed state, middleware, routes, OpenAPI."""
