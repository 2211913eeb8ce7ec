"""The gate before the switch: the index build, the checks and their data, retrieval
metrics, the stored report and the watermark cutover checks.
"""
