"""Helpers that stages of several families share, so no family reaches into another's modules.

``rope``: the rotary tables a stage uses to undo and redo RoPE (low rank with ``rope=pre``,
KVQuant's pre-RoPE keys); ``keep``: exact rows kept beside another encoding (the attention-sink
rows of the low-rank, cross-layer and KVQuant/CQ stages). Importing this package imports neither.
"""
