"""Pipeline stages as plain Python: each module has `Params` and `run(params, ctx)`."""
