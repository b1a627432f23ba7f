"""Selection stages (family ``select``): which rows of each layer and head survive.

Method modules (listed in ``kvstack.stages.STAGE_MODULES``): ``streaming``, ``attention`` (q2c,
snapkv, tova, expected), ``h2o``, ``keys`` (knorm, keydiff, random), ``kvzip``, ``critical``,
``merge``, ``fastgen``. Shared helpers: ``base`` (``ScoredSelect``: score, then keep a budget),
``based`` (``BasedSelect``: a stage built on another method's scores), ``scores`` (score
arithmetic and the attention statistics the prefill captured) and ``alloc`` (how a budget is
split over heads and layers). Importing this package imports none of them.
"""
