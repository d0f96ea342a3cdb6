"""SAT (SwissArmyTransformer) checkpoint conversion: tool-only, never imported when serving."""
