"""Peer systems run through kvstack's evaluation harness on identical inputs (NVIDIA kvpress)."""
