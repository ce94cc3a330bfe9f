"""The web front-ends: the Gradio chat (with the arena) and its FastAPI/uvicorn server."""

import os

# Gradio reports usage to its servers unless told not to; a self-hosted chat must not phone home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
