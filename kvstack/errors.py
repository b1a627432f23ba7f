"""Typed errors. Every message says what went wrong *and what to do about it*.

Callers catch :class:`KvstackError` to handle any kvstack failure; the subclasses
let a program react to one kind (a bad recipe string vs. a missing model package).
"""

from __future__ import annotations


class KvstackError(Exception):
    """Base class of every error kvstack raises on purpose."""


class RecipeError(KvstackError, ValueError):
    """A recipe string or stage parameters that cannot be used."""


class BudgetError(KvstackError, ValueError):
    """A budget that cannot be met: negative, zero where tokens are needed, or beyond the context."""


class ModelError(KvstackError, TypeError):
    """A model kvstack cannot drive (not a causal LM, unsupported attention, wrong model for a cache)."""


class InputError(KvstackError, ValueError):
    """Bad user input: an empty context, ids of the wrong shape, a missing file."""


class ConfigError(KvstackError, ValueError):
    """A model config (config.json or preset) missing a field or holding an impossible value."""


class ModelNotInstalledError(KvstackError, ModuleNotFoundError):
    """A bundled model's package is not installed; the message gives the pip command."""


class CacheFormatError(KvstackError, ValueError):
    """A cache file or stream that is corrupt, truncated, or from another model/version."""


class ResultsError(KvstackError, ValueError):
    """An evaluation results file (JSONL) that is corrupt before its last line, or written by another grid."""


class TransportError(KvstackError, ConnectionError):
    """A cache server or store refused or failed a request; the message says what to change."""


class CacheNotFoundError(TransportError, LookupError):
    """The server has no cache under that key (never pushed, or deleted)."""


class MissingDependencyError(KvstackError, ModuleNotFoundError):
    """An optional package a feature needs is not installed; the message gives the pip command."""


class PeerError(KvstackError, RuntimeError):
    """A peer system run for comparison (kvpress in its own venv) failed; finished cells are kept."""


class ExecutorError(KvstackError, RuntimeError):
    """The workers of an evaluation executor (a Ray cluster) could not be reached or started."""
