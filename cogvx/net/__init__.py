"""Where bytes come from: the address policy for user URLs (`urls`), HTTP with pinned addresses and
retries (`http`), ordered chunk sources (`chunks`), and request file inputs (`inputs`).
"""
