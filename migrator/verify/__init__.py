"""The gate before the switch: the index build, the checks and the data they read, retrieval
metrics, the report model and the watermark that cutover checks.

Read-only on the user's table apart from the concurrent index build. Renders nothing but the
report's own documents (Markdown, HTML, JSON).
"""
