"""Evaluation: seeded long-context tasks (:mod:`.tasks`), the grid runner behind ``kvstack eval``
(:mod:`.runner`), metrics and teacher-forced NLL (:mod:`.metrics`, :mod:`.nll`), reports and Pareto
plots (:mod:`.report`, :mod:`.plots`), and the NVIDIA kvpress bridge (:mod:`.peers`). See docs/eval.md."""
