"""migrator's side of the database: connections, the embedded services, the one executor,
catalog reads, the state machine, the command context and migrator's own schema.

Must not call a provider or a broker.
"""
