"""`migrator demo`: the whole story on embedded services, and its text corpus."""
