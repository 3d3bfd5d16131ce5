"""JetSpec Studio's web app: figures (pure Plotly), text rendering, per-request sessions, event
handlers, the Gradio layout and the server entry point (`python app.py`)."""
