# Shared pytest set-up. Append; do not remove other people's lines.
pytest_plugins = ["label_studio_server"]  # the real Label Studio server fixture (tests/label_studio_server.py)
