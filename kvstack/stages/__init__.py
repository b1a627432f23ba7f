"""The techniques, one family per module; importing a module registers its stages."""
