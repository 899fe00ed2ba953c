"""Helpers for the test suite and the benchmarks: fakes, factories, throwaway services.

Installed with the project but never imported by it: ``gateway`` and ``adapters`` must not
import this package (an import-linter contract and tests/test_shipped_imports.py check it),
because it imports pytest and hypothesis, which only the ``dev`` extra installs.
"""
