"""App-side pure helpers for the Streamlit app (app.py): models-dir listing, attention heat maps."""
