"""The driver side: CLI, configuration, run planning, Ray scheduling, commit and resume.

This is the only package that imports Ray; it wraps the plain classes of
``tagcap.workers`` as Ray tasks and actors.
"""
