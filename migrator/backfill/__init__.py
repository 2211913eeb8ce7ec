"""The backfill: adopt and expand, the producer and monitor, the batch ledger, the unit
of work, the shared rate budget and the producer's side of the broker.
"""
