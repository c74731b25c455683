"""Pipeline stages: callables for Ray Data's map_batches, one module each."""
