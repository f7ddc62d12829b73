"""Reading rows: summaries, explanations, the gate, the frontier, comparisons."""
