"""Thin entry points: parsing and wiring only. Each module's `main` is a click command, run as
`python jobs/<name>.py` or `rlaifv <name>`."""
