"""`migrator demo`: the whole story on embedded services (`run`), and the text corpus it loads
(`corpus`: Python's own docstrings, parsed, never imported). Only touches the demo schema.
"""
