"""``python -m gateway`` is ``maagw``."""

from gateway.cli import main

main()
