"""Command-line interface (filled in by the foundation issue)."""


def main() -> None:
    raise SystemExit("not yet")
