"""kvstack inside other engines (optional extras): :mod:`kvstack.integrations.lmcache`."""
