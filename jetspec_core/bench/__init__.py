"""Benchmarks: `accept` (acceptance length on HumanEval / MT-Bench, with `datasets` and an HTML
`report`); `speed` and `kernels` live in their own modules and are dispatched by `cli`."""
