"""The plan: a frozen, validated model of one migration, its vocabularies, its reference
page and its estimates.

Pure: no database, no network, no environment reads.
"""
