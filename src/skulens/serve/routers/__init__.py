"""One router per area of the API; `serve.app.create_app` mounts the ones whose back-ends are configured."""
