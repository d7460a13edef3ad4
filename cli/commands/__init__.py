"""The `arrival` commands, one module per group; cli/main.py puts them together.

The rule for imports here: a command module imports at its top only what every command needs to
start (typer, rich, the CLI's own output and target), and everything else (boto3, pandas, MLflow,
the domain) inside the command that uses it. `arrival --help` and a typo then answer at once, and a
command pays only for what it runs.
"""
