"""The local web page (tools/web.py): a Gradio client of a Cog server. Tooling only."""
