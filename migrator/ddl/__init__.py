"""Every statement of every phase, as data: builders on psycopg.sql, the phase steps with
their forward and backward statements, and the runbook rendered from them.

Pure: renders without a connection; never runs a statement.
"""
