"""Bridge mode: a query-side map from the new model's space into the old one (docs/bridge.md).

fit (pure numpy), sample (paired vectors of backfilled rows, read in bounded chunks), store
(migrator.bridges and the registry's bridge_id), provider (a new-model provider whose vectors
are mapped into the old space, for whatever would call a retired old model).
"""
