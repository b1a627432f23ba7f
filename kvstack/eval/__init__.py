"""Evaluation: texts, tasks, runners and reports."""
