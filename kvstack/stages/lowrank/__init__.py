"""Low-rank stages (family ``lowrank``): rows stored as coefficients on a basis.

Method module (listed in ``kvstack.stages.STAGE_MODULES``): ``svd`` (svd, latent). Shared
helpers, also used by ``quant`` and ``crosslayer``: ``fit`` (the SVD arithmetic), ``rows``
(the coefficient containers), ``calibration`` (bases fitted once on text, and the file format
calibrated codebooks reuse). Importing this package imports none of them.
"""
