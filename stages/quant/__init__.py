"""What every quantized artifact shares (`qat`, `ptq`, and the report after them): one held-out
evaluation for any exported transformers model, and the on-disk check that weights are int4."""
