"""The backfill: adopt the view and expand the table (`expand`), produce and watch the batches
(`monitor`), the batch ledger (`ledger`), the unit of work (`work`), the shared rate budget
(`ratelimit`) and the producer's side of the broker (`broker`).

Completion is judged from the database, never the broker. Renders nothing.
"""
