"""Cross-layer stages (family ``crosslayer``): adjacent layers share what they have in common.

Method module (listed in ``kvstack.stages.STAGE_MODULES``): ``share`` (minicache, xkv). Helper:
``merge`` (MiniCache's SLERP merge of two layers and its container). Importing this package
imports none of them.
"""
