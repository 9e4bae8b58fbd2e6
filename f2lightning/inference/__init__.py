"""Running a model: batched generation with token log-probabilities, scored results, prediction over images.

`predict`, `annotate`, `evaluate` and the training module's validation all generate through `generation.generate`
(or, inside a Lightning loop, `Florence2.generate` with the same per-task settings) and read results through
`results.scored_result`.
"""
