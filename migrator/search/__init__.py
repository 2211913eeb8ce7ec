"""Search through a migrator view: the client services import (`migrator.search`), the
small HTTP service and the drill that loads it.
"""
