"""What the predictors call: one service per model family (`video`, `caption`, `enhance`): load
once, then check, run, encode, record metrics.
"""
