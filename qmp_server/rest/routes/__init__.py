"""The route modules; :func:`qmp_server.rest.app.create_app` includes their routers."""
