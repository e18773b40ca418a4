"""`make demo`: the whole product on the embedded stack, step by step, nothing left running."""
